"""Task losses: masked means over the points of one task.

A loss is a pure function ``loss(predictions, targets, mask) -> scalar`` for
one task, where ``mask`` is ``None`` or a boolean vector over points. Any
function with this signature works with :func:`hbmeta.adapt`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _masked_mean(per_point, mask):
    if mask is None:
        return jnp.mean(per_point)
    w = mask.astype(per_point.dtype)
    return jnp.sum(per_point * w) / jnp.maximum(jnp.sum(w), 1.0)


def mse(predictions, targets, mask=None):
    """Mean squared error over the (real) points of a task.

    ``L = (1/K) Σ_k ||f(x_k) − y_k||² / o`` for ``o`` outputs; with one output
    this is the MAML protocol's ``mean over K points of (y − f(x))²``
    (docs/references.md).

    Example:
        >>> import jax.numpy as jnp
        >>> float(mse(jnp.ones((3, 1)), jnp.zeros((3, 1))))
        1.0
    """
    per_point = jnp.mean(jnp.square(predictions - targets), axis=-1)
    return _masked_mean(per_point, mask)


def softmax_cross_entropy(logits, labels, mask=None):
    """Mean softmax cross-entropy of integer ``labels`` under ``logits``.

    ``L = −(1/K) Σ_k log softmax(logits_k)[y_k]``.

    Example:
        >>> import jax.numpy as jnp
        >>> round(float(softmax_cross_entropy(jnp.zeros((2, 4)), jnp.array([0, 3]))), 4)
        1.3863
    """
    logp = jax.nn.log_softmax(logits, axis=-1)
    per_point = -jnp.take_along_axis(logp, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return _masked_mean(per_point, mask)


LOSSES = {"mse": mse, "cross_entropy": softmax_cross_entropy}


def get_loss(loss):
    """A loss function from a name (``"mse"``, ``"cross_entropy"``) or a callable."""
    if callable(loss):
        return loss
    if loss not in LOSSES:
        raise ValueError(f"loss={loss!r} is not known; expected one of {sorted(LOSSES)} or a callable")
    return LOSSES[loss]
