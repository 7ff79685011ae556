"""Uncertainty metrics of a posterior predictive (docs/references.md, uncertainty metrics).

Every function takes predictive draws with ``draw_axes`` leading axes (default
2: ``(chain, draw)``, as in :class:`~hbmeta.Predictive`), the observed targets
and an optional boolean mask over points (False points are ignored). Pass
``draw_axes=0`` for a single predictive distribution.

Regression: ``mean`` is ``(*draws, *points, o)``, ``y`` is ``(*points, o)``
(the last axis holds the outputs), ``noise`` σ is ``(*draws)``, a scalar or
broadcastable to ``mean``. The predictive of a point is the mixture
``(1/S) Σ_s N(μˢ, σˢ²)``, and its CDF ``F(y) = (1/S) Σ_s Φ((y − μˢ)/σˢ)``.
Classification: ``probs`` is ``(*draws, *points, k)``, ``y`` integer labels
``(*points)``; the predictive is ``p̄ = (1/S) Σ_s pˢ``.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp
from jax.scipy.stats import norm

from hbmeta.base.jax_checks import as_key
from hbmeta.base.validate import check_positive_int
from hbmeta.predict.mixture import pit
from hbmeta.predict.predictive import Predictive, sample_predictive

PACOH_LEVELS = np.linspace(0.05, 0.95, 20)


def _draws(pred, y, draw_axes, extra, name):
    pred = jnp.asarray(pred)
    y = jnp.asarray(y)
    if int(draw_axes) != draw_axes or draw_axes < 0:
        raise ValueError(f"draw_axes={draw_axes!r}; expected a non-negative integer")
    expected = tuple(y.shape) + extra
    if pred.shape[draw_axes:] != expected:
        raise ValueError(
            f"{name} has shape {pred.shape}; expected {draw_axes} draw axes followed by {expected} "
            f"(the targets' shape {y.shape})"
        )
    return pred.reshape((-1,) + pred.shape[draw_axes:]), y


def _weights(mask, point_shape, dtype):
    if mask is None:
        return jnp.ones(point_shape, dtype)
    mask = jnp.asarray(mask)
    if mask.shape != tuple(point_shape):
        raise ValueError(f"mask has shape {mask.shape}; expected {tuple(point_shape)}, one entry per point")
    return mask.astype(dtype)


def _noise(noise, mean_shape, draw_axes, dtype):
    """σ reshaped to broadcast against draws flattened to one axis, ``(N, *points, o)``."""
    sd = jnp.asarray(noise, dtype)
    draws, rest = tuple(mean_shape[:draw_axes]), tuple(mean_shape[draw_axes:])
    if sd.ndim == 0 or (draw_axes and sd.shape == draws):
        return jnp.broadcast_to(sd, draws).reshape((-1,) + (1,) * len(rest))
    try:
        sd = jnp.broadcast_to(sd, mean_shape)
    except ValueError:
        raise ValueError(f"noise has shape {sd.shape}; expected {draws}, a scalar or {tuple(mean_shape)}") from None
    return sd.reshape((-1,) + rest)


def _wmean(values, w):
    return jnp.sum(jnp.where(w > 0, values, 0.0) * w) / jnp.sum(w)


def _regression(mean, noise, y, mask, draw_axes):
    shape = jnp.shape(mean)
    mu, y = _draws(mean, y, draw_axes, (), "mean")
    if y.ndim < 1:
        raise ValueError(f"y has shape {y.shape}; expected (..., outputs)")
    sd = _noise(noise, shape, draw_axes, mu.dtype)
    w = _weights(mask, y.shape[:-1], mu.dtype)
    return mu, sd, y.astype(mu.dtype), w


@partial(jax.jit, static_argnames=("draw_axes",))
def mixture_cdf(mean, noise, y, *, draw_axes: int = 2):
    """``F(y) = (1/S) Σ_s Φ((y − μˢ)/σˢ)`` per point and output: the predictive CDF at the targets."""
    mu, sd, y, _ = _regression(mean, noise, y, None, draw_axes)
    return pit(mu, sd, y)


@partial(jax.jit, static_argnames=("draw_axes",))
def mixture_nll(mean, noise, y, mask=None, *, draw_axes: int = 2):
    """Negative log predictive density, averaged over points.

    ``NLL = −mean_points log((1/S) Σ_s Π_o N(y_o | μˢ_o, σˢ²))``, with logsumexp.

    Example:
        >>> import numpy as np
        >>> round(float(mixture_nll(np.zeros((1, 1)), 1.0, np.zeros((1, 1)), draw_axes=0)), 4)  # ½ log 2π
        0.9189
    """
    mu, sd, y, w = _regression(mean, noise, y, mask, draw_axes)
    logp = jnp.sum(norm.logpdf(y, mu, sd), axis=-1)
    mixture = logsumexp(logp, axis=0) - jnp.log(logp.shape[0])
    return -_wmean(mixture, w)


@partial(jax.jit, static_argnames=("draw_axes",))
def predictive_mse(mean, y, mask=None, *, draw_axes: int = 2):
    """Squared error of the predictive mean ``μ̄ = (1/S) Σ_s μˢ``, averaged over points and outputs."""
    mu, y = _draws(mean, y, draw_axes, (), "mean")
    w = _weights(mask, y.shape[:-1], mu.dtype)
    err = jnp.mean(jnp.square(jnp.mean(mu, axis=0) - y), axis=-1)
    return _wmean(err, w)


@partial(jax.jit, static_argnames=("draw_axes",))
def calibration_curve(mean, noise, y, mask=None, *, levels=None, draw_axes: int = 2):
    """``(levels, freq)``: freq(q) = fraction of (point, output) pairs with F(y) ≤ q.

    Perfect calibration gives freq(q) = q. Default levels: PACOH's 20 values 0.05…0.95.
    """
    mu, sd, y, w = _regression(mean, noise, y, mask, draw_axes)
    levels = jnp.asarray(PACOH_LEVELS if levels is None else levels, mu.dtype)
    u = pit(mu, sd, y)
    w = jnp.broadcast_to(w[..., None], u.shape)
    freq = jax.vmap(lambda q: _wmean((u <= q).astype(mu.dtype), w))(levels)
    return levels, freq


@partial(jax.jit, static_argnames=("draw_axes",))
def calibration_error(mean, noise, y, mask=None, *, levels=None, draw_axes: int = 2):
    """PACOH's calibration error ``sqrt(mean_q (freq(q) − q)²)`` over 20 levels 0.05…0.95.

    0 is perfect. With ``n`` points and F(y) exactly uniform,
    ``E[error²] = mean_q q(1 − q)/n ≈ 0.167/n``.
    """
    levels, freq = calibration_curve(mean, noise, y, mask, levels=levels, draw_axes=draw_axes)
    return jnp.sqrt(jnp.mean(jnp.square(freq - levels)))


def calibration_error_noise(mean, noise, y, mask=None, *, levels=None, draw_axes: int = 2):
    """The calibration error that sampling the tasks alone gives: ``sqrt(mean_q SE(freq(q))²)``.

    :func:`calibration_error` is estimated from a finite set of tasks, and the
    points of one task are not independent (their errors share the task's
    amplitude, phase, support set), so even a perfectly calibrated predictive
    shows an error of about this size. The tasks are the sampling unit (the
    first point axis of ``y``; with one point axis every point is its own
    task): with ``F_j(q)`` the weighted fraction of task j's (point, output)
    pairs with ``F(y) ≤ q``, ``n_j`` their weight and ``freq(q) = Σ n_j F_j /
    Σ n_j``, the standard error of the ratio over tasks is

        SE(q)² = T/(T − 1) · Σ_j n_j² (F_j(q) − freq(q))² / (Σ_j n_j)²,

    the variance a bootstrap over tasks estimates. Under exact calibration
    ``E[calibration_error²] ≈ mean_q SE(q)²``, so a calibration error well
    above this value is miscalibration and one near it is indistinguishable
    from sampling noise. For independent points it is about
    ``sqrt(mean_q q(1 − q)/n)``; for points that always agree within a task,
    ``sqrt(mean_q q(1 − q)/T)``.

    Example:
        >>> import numpy as np
        >>> y = np.random.default_rng(0).normal(size=(400, 5, 1))  # N(0, 1) targets, predictive N(0, 1)
        >>> n = calibration_error_noise(np.zeros((400, 5, 1)), 1.0, y, draw_axes=0)
        >>> bool(0.85 < float(n) / np.sqrt(np.mean(np.linspace(.05, .95, 20) * np.linspace(.95, .05, 20)) / 2000) < 1.15)
        True
    """
    _, se = calibration_standard_errors(mean, noise, y, mask, levels=levels, draw_axes=draw_axes)
    return jnp.sqrt(jnp.mean(jnp.square(se)))


def calibration_standard_errors(mean, noise, y, mask=None, *, levels=None, draw_axes: int = 2):
    """``(levels, SE)``: the standard error over tasks of each level's frequency (:func:`calibration_error_noise`).

    ``freq(q) ± 2·SE(q)`` is the band a calibrated predictive's curve stays in about 95% of the time
    at each level (``hbmeta.plots.plot_calibration`` shades it around the diagonal).
    """
    mu, sd, y, w = _regression(mean, noise, y, mask, draw_axes)
    levels = jnp.asarray(PACOH_LEVELS if levels is None else levels, mu.dtype)
    u = pit(mu, sd, y)  # (*points, o)
    w = jnp.broadcast_to(w[..., None], u.shape)
    if u.ndim < 2 or u.shape[0] < 2:
        raise ValueError(f"y has shape {tuple(y.shape)}; expected at least two tasks along its first axis")
    tasks = u.shape[0]
    u, w = u.reshape(tasks, -1), w.reshape(tasks, -1)
    n = jnp.sum(w, axis=1)  # (T,)
    hits = jax.vmap(lambda q: jnp.sum(w * (u <= q), axis=1))(levels)  # (L, T): n_j F_j(q)
    freq = jnp.sum(hits, axis=1, keepdims=True) / jnp.sum(n)
    var = tasks / (tasks - 1) * jnp.sum(jnp.square(hits - n * freq), axis=1) / jnp.square(jnp.sum(n))
    return levels, jnp.sqrt(var)


@partial(jax.jit, static_argnames=("level", "draw_axes"))
def coverage(mean, noise, y, mask=None, *, level: float = 0.9, draw_axes: int = 2):
    """Fraction of (point, output) pairs inside the central ``level`` interval of the mixture.

    A target is inside when ``(1 − level)/2 ≤ F(y) ≤ (1 + level)/2``.
    """
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level={level!r}; expected a probability strictly between 0 and 1")
    mu, sd, y, w = _regression(mean, noise, y, mask, draw_axes)
    u = pit(mu, sd, y)
    inside = (u >= (1 - level) / 2) & (u <= (1 + level) / 2)
    return _wmean(inside.astype(mu.dtype), jnp.broadcast_to(w[..., None], u.shape))


def _classification(probs, y, mask, draw_axes):
    shape = jnp.shape(probs)
    if len(shape) < draw_axes + 1:
        raise ValueError(f"probs has shape {shape}; expected {draw_axes} draw axes, the points and classes")
    p, y = _draws(probs, y, draw_axes, (shape[-1],), "probs")
    if y.dtype.kind not in "iu":
        raise ValueError(f"y has dtype {y.dtype}; expected integer class labels")
    w = _weights(mask, y.shape, p.dtype)
    pbar = jnp.mean(p, axis=0)
    return pbar, jnp.where(w > 0, y, 0).astype(jnp.int32), w


@partial(jax.jit, static_argnames=("draw_axes",))
def accuracy(probs, y, mask=None, *, draw_axes: int = 2):
    """Fraction of points whose most probable class under ``p̄`` is the label."""
    pbar, y, w = _classification(probs, y, mask, draw_axes)
    return _wmean((jnp.argmax(jnp.nan_to_num(pbar, nan=-1.0), axis=-1) == y).astype(pbar.dtype), w)


@partial(jax.jit, static_argnames=("draw_axes",))
def categorical_nll(probs, y, mask=None, *, draw_axes: int = 2):
    """``−mean_points log p̄_y`` (p̄ floored at the dtype's smallest normal number)."""
    pbar, y, w = _classification(probs, y, mask, draw_axes)
    py = jnp.take_along_axis(pbar, y[..., None], axis=-1)[..., 0]
    return -_wmean(jnp.log(jnp.maximum(py, jnp.finfo(pbar.dtype).tiny)), w)


@partial(jax.jit, static_argnames=("draw_axes",))
def brier_score(probs, y, mask=None, *, draw_axes: int = 2):
    """``mean_points Σ_k (p̄_k − 1[y = k])²`` (summed over classes: 0 is perfect, 2 the worst)."""
    pbar, y, w = _classification(probs, y, mask, draw_axes)
    onehot = jax.nn.one_hot(y, pbar.shape[-1], dtype=pbar.dtype)
    return _wmean(jnp.sum(jnp.square(pbar - onehot), axis=-1), w)


@partial(jax.jit, static_argnames=("num_bins", "draw_axes"))
def reliability_curve(probs, y, mask=None, *, num_bins: int = 15, draw_axes: int = 2):
    """Per equal-width confidence bin: ``(mean confidence, accuracy, count)``; empty bins give NaN."""
    check_positive_int("num_bins", num_bins)
    pbar, y, w = _classification(probs, y, mask, draw_axes)
    conf = jnp.max(jnp.nan_to_num(pbar, nan=0.0), axis=-1)
    correct = (jnp.argmax(jnp.nan_to_num(pbar, nan=-1.0), axis=-1) == y).astype(pbar.dtype)
    b = jnp.clip(jnp.floor(conf * num_bins).astype(jnp.int32), 0, num_bins - 1).ravel()
    wf = w.ravel()
    count = jnp.zeros(num_bins, pbar.dtype).at[b].add(wf)
    conf_sum = jnp.zeros(num_bins, pbar.dtype).at[b].add(wf * conf.ravel())
    acc_sum = jnp.zeros(num_bins, pbar.dtype).at[b].add(wf * correct.ravel())
    return conf_sum / count, acc_sum / count, count


@partial(jax.jit, static_argnames=("num_bins", "draw_axes"))
def expected_calibration_error(probs, y, mask=None, *, num_bins: int = 15, draw_axes: int = 2):
    """ECE ``= Σ_b (n_b/n) |acc_b − conf_b|`` over ``num_bins`` equal-width confidence bins (default 15)."""
    conf, acc, count = reliability_curve(probs, y, mask, num_bins=num_bins, draw_axes=draw_axes)
    gaps = jnp.where(count > 0, jnp.abs(acc - conf), 0.0)
    return jnp.sum(gaps * count) / jnp.sum(count)


def expected_calibration_error_floor(probs, mask=None, *, key, num_draws: int = 200, num_bins: int = 15,
                                     draw_axes: int = 2):
    """The ECE a perfectly calibrated predictive with these probabilities shows: mean over relabellings.

    ECE is biased upwards: with finitely many points in each confidence bin,
    ``|acc_b − conf_b|`` is positive even when the probabilities are right. So
    labels are drawn from the mixture's own probabilities ``p̄`` (consistency
    resampling, Bröcker & Smith 2007), ``num_draws`` times, and the mean of
    their ECE (:func:`expected_calibration_error`, same bins and mask) is
    returned: an ECE near it is indistinguishable from calibration on these
    points, one well above it is miscalibration. Labels are drawn
    independently per point, so correlation between the points of a task is
    not in it: a lower bound of the sampling noise.

    Example:
        >>> import numpy as np, jax
        >>> p = np.tile([0.7, 0.3], (400, 1))  # one bin: E|Bin(400, 0.7)/400 − 0.7| ≈ 0.018
        >>> round(float(expected_calibration_error_floor(p, key=jax.random.key(0), num_draws=2000, draw_axes=0)), 3)
        0.018
    """
    check_positive_int("num_draws", num_draws)
    # the labels are drawn below: placeholders only let _classification check the shapes and the mask
    pbar, _, _ = _classification(probs, jnp.zeros(jnp.shape(probs)[draw_axes:-1], jnp.int32), mask, draw_axes)
    logits = jnp.log(jnp.maximum(jnp.nan_to_num(pbar, nan=0.0), jnp.finfo(pbar.dtype).tiny))
    keys = jax.random.split(as_key(key), int(num_draws))
    mask = None if mask is None else jnp.asarray(mask)

    def one(k):
        y = jax.random.categorical(k, logits, axis=-1)
        return expected_calibration_error(pbar, y, mask, num_bins=num_bins, draw_axes=0)

    return jnp.mean(jax.lax.map(one, keys))


SPREAD_GROUPS = ("low", "mid", "high")


def coverage_by_spread(predictive, tasks, *, level: float = 0.9) -> dict:
    """Coverage of the central ``level`` interval in each third of the tasks ranked by support-set spread.

    Tasks are ranked by the standard deviation of their support targets (a
    proxy of the task's scale, e.g. a sinusoid's amplitude: the quantity a
    single global σ cannot follow) and split into three equal groups;
    returns ``{"coverage_90_low_spread": …, "coverage_90_mid_spread": …,
    "coverage_90_high_spread": …}`` (for ``level=0.9``). A predictive whose
    spread follows each task has about ``level`` in every group.
    Regression only.

    Example:
        >>> import jax
        >>> import hbmeta as hb
        >>> net = hb.mlp((1, 8, 1)); theta = net.init(jax.random.key(0))
        >>> spec = hb.ModelSpec(hb.GradientSteps(net.apply), theta, likelihood=hb.NormalLikelihood(noise=1.0))
        >>> post = hb.Posterior({"theta": spec.ravel(theta)[None, None]}, spec, "custom", {})
        >>> tasks = hb.Sinusoid().sample(jax.random.key(1), 6)
        >>> sorted(coverage_by_spread(hb.sample_predictive(post, tasks, key=jax.random.key(2)), tasks))
        ['coverage_90_high_spread', 'coverage_90_low_spread', 'coverage_90_mid_spread']
    """
    if not isinstance(predictive, Predictive) or not predictive.regression:
        raise ValueError("coverage_by_spread needs a regression hbmeta.Predictive")
    ys = np.asarray(tasks.y_support, dtype=np.float64)
    m = np.ones(ys.shape[:2], bool) if tasks.support_mask is None else np.asarray(tasks.support_mask, bool)
    w = m[..., None] * np.ones_like(ys)
    mean = (ys * w).sum(axis=(1, 2)) / np.maximum(w.sum(axis=(1, 2)), 1)
    spread = np.sqrt((((ys - mean[:, None, None]) ** 2) * w).sum(axis=(1, 2)) / np.maximum(w.sum(axis=(1, 2)), 1))
    order = np.argsort(spread, kind="stable")
    noise = np.asarray(predictive.noise)
    per_point = noise.ndim > 2  # (C, S, T, M, o) per point, else (C, S) per draw
    out = {}
    for name, idx in zip(SPREAD_GROUPS, np.array_split(order, len(SPREAD_GROUPS))):
        qm = None if tasks.query_mask is None else np.asarray(tasks.query_mask)[idx]
        sd = noise[:, :, idx] if per_point else noise
        value = coverage(predictive.mean[:, :, idx], sd, np.asarray(tasks.y_query)[idx], qm, level=level)
        out[f"coverage_{round(100 * level)}_{name}_spread"] = float(value)
    return out


def predictive_metrics(posterior, tasks, *, key, predictive=None, draw_chunk: int = 64, task_chunk: int = 32) -> dict:
    """All §4 metrics of the posterior predictive on ``tasks``' query sets, as plain floats.

    Regression: ``mse``, ``nll``, ``calibration_error``,
    ``calibration_error_noise`` (with two or more tasks:
    :func:`calibration_error_noise`), ``coverage_50``, ``coverage_90``,
    ``coverage_95``. Classification: ``accuracy``, ``nll``,
    ``brier``, ``ece``, ``ece_floor`` (:func:`expected_calibration_error_floor`, labels
    drawn with ``key`` folded in with 1). A ``predictive`` already sampled for these tasks is
    used as it is; otherwise :func:`~hbmeta.sample_predictive` draws one.

    Example:
        >>> import jax
        >>> import hbmeta as hb
        >>> net = hb.mlp((1, 8, 1)); theta = net.init(jax.random.key(0))
        >>> spec = hb.ModelSpec(hb.GradientSteps(net.apply), theta, likelihood=hb.NormalLikelihood(noise=1.0))
        >>> post = hb.Posterior({"theta": spec.ravel(theta)[None, None]}, spec, "custom", {})
        >>> m = hb.predictive_metrics(post, hb.Sinusoid().sample(jax.random.key(1), 4), key=jax.random.key(2))
        >>> sorted(m)
        ['calibration_error', 'calibration_error_noise', 'coverage_50', 'coverage_90', 'coverage_95', 'mse', 'nll']
    """

    if predictive is None:
        predictive = sample_predictive(posterior, tasks, key=key, draw_chunk=draw_chunk, task_chunk=task_chunk)
    elif not isinstance(predictive, Predictive):
        raise ValueError(f"predictive is a {type(predictive).__name__}; expected hbmeta.Predictive or None")
    y, mask = tasks.y_query, tasks.query_mask
    if predictive.regression:
        args = (predictive.mean, predictive.noise, y, mask)
        out = {
            "mse": predictive_mse(predictive.mean, y, mask),
            "nll": mixture_nll(*args),
            "calibration_error": calibration_error(*args),
        }
        if jnp.ndim(y) > 2 and jnp.shape(y)[0] > 1:  # tasks on the first axis: the error's sampling noise
            out["calibration_error_noise"] = calibration_error_noise(*args)
        for level in (50, 90, 95):
            out[f"coverage_{level}"] = coverage(*args, level=level / 100)
    else:
        args = (predictive.probs, y, mask)
        out = {
            "accuracy": accuracy(*args),
            "nll": categorical_nll(*args),
            "brier": brier_score(*args),
            "ece": expected_calibration_error(*args),
            "ece_floor": expected_calibration_error_floor(predictive.probs, mask,
                                                          key=jax.random.fold_in(as_key(key), 1)),
        }
    return {name: float(value) for name, value in out.items()}
