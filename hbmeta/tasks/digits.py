"""Few-shot episodes from scikit-learn's bundled 8×8 handwritten digits (no download).

``sklearn.datasets.load_digits`` ships 1,797 images of the digits 0–9 (about
180 per digit), 8×8 pixels with 17 grey levels (UCI "optical recognition of
handwritten digits", Alpaydin and Kaynak 1998). :func:`digits_episodes`
turns a subset of the digits into an :class:`~hbmeta.tasks.images.ImageEpisodes`
source: meta-train on some digits, meta-test on the others, so that the test
classes were never seen in training (the default splits are ``0–4`` / ``5–9``).
As in the MAML paper's Omniglot protocol, each digit also appears rotated by
90°, 180° and 270° as three more classes (``rotations=True``): 20 classes on
each side. Some rotated classes look alike (0, 1 and 8 are nearly symmetric
under 180°, and 6 turned by 180° is a 9), which makes some episodes harder;
it is the same on both sides. Pixel values are divided by 16 (to [0, 1]).
scikit-learn is an optional extra (``pip install "hbmeta[examples]"``).
"""

from __future__ import annotations

import numpy as np

from hbmeta.tasks.images import ImageEpisodes

TRAIN_DIGITS = (0, 1, 2, 3, 4)
TEST_DIGITS = (5, 6, 7, 8, 9)


def load_digits_array():
    """``(images, counts)``: float32 ``(10, n, 8, 8, 1)`` in [0, 1] with ``counts[d]`` images of digit ``d``."""
    # scikit-learn is an optional extra (hbmeta[examples]); imported here so that `import hbmeta` does not need it.
    try:
        from sklearn.datasets import load_digits  # optional extra: imported only when the digits are used
    except ImportError:  # pragma: no cover - installed wherever the tests run
        raise ImportError('the digits need scikit-learn; install it with pip install "hbmeta[examples]"') from None
    data = load_digits()
    counts = np.bincount(data.target, minlength=10)
    images = np.zeros((10, counts.max(), 8, 8, 1), np.float32)
    for d in range(10):
        images[d, : counts[d], :, :, 0] = data.images[data.target == d] / 16.0
    return images, counts


def digits_episodes(
    digits=TRAIN_DIGITS,
    *,
    num_ways: int = 5,
    num_shots: int = 1,
    num_query: int = 15,
    rotations: bool = True,
) -> ImageEpisodes:
    """N-way K-shot episodes whose classes are the given ``digits`` (and their rotations, if asked).

    Example:
        >>> import jax
        >>> train = digits_episodes(TRAIN_DIGITS, num_shots=1, num_query=5)
        >>> test = digits_episodes(TEST_DIGITS, num_shots=1, num_query=5)
        >>> t = test.sample(jax.random.key(0), 4)
        >>> t.x_support.shape, t.x_query.shape, test.image_shape
        ((4, 5, 64), (4, 25, 64), (8, 8, 1))
    """
    digits = tuple(int(d) for d in digits)
    if not digits or len(set(digits)) != len(digits) or not all(0 <= d <= 9 for d in digits):
        raise ValueError(f"digits={digits!r}; expected distinct digits in 0..9")
    images, counts = load_digits_array()
    index = np.asarray(digits)
    return ImageEpisodes(images[index], counts[index], num_ways=num_ways, num_shots=num_shots, num_query=num_query,
                         rotations=rotations, class_names=tuple(str(d) for d in digits))
