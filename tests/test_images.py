"""Image episodes: an Omniglot-layout folder of PNG files made here, rotations, the digits, errors."""


import jax
import numpy as np
import pytest
from PIL import Image

from hbmeta.tasks.digits import TEST_DIGITS, TRAIN_DIGITS, digits_episodes, load_digits_array
from hbmeta.tasks.images import ImageEpisodes, omniglot_episodes

SIZE = 8
DRAWINGS = 5


def _pattern(char_id):
    """A binary 8×8 character: ink 0 on white 255, like Omniglot's PNGs; no two are alike or rotations of each other."""
    rng = np.random.default_rng(1000 + char_id)
    return np.where(rng.uniform(size=(SIZE, SIZE)) < 0.35, 0, 255).astype(np.uint8)


def _drawing(char_id, k):
    a = _pattern(char_id).copy()
    a[SIZE - 1, k] = 0 if a[SIZE - 1, k] else 255  # each drawing differs from the others in one pixel
    return a


@pytest.fixture(scope="module")
def omniglot(tmp_path_factory):
    """root/images_background (2 alphabets × 3 characters) and root/images_evaluation (1 × 2), 5 drawings each."""
    root = tmp_path_factory.mktemp("omniglot")
    char_id = 0
    layout = {"images_background": {"Alpha": 3, "Beta": 3}, "images_evaluation": {"Gamma": 2}}
    for split, alphabets in layout.items():
        for alphabet, n in alphabets.items():
            for c in range(n):
                folder = root / split / alphabet / f"character{c + 1:02d}"
                folder.mkdir(parents=True)
                for k in range(DRAWINGS):
                    Image.fromarray(_drawing(char_id, k), mode="L").save(folder / f"{char_id:04d}_{k + 1:02d}.png")
                char_id += 1
    (root / "images_background" / "README.txt").write_text("not a folder")
    return root


def _catalogue(char_ids):
    """Every (character, drawing, rotation) as the loader should give it: ink 1, background 0."""
    out = {}
    for c in char_ids:
        for k in range(DRAWINGS):
            img = 1.0 - _drawing(c, k) / 255.0
            for r in range(4):
                out[np.rot90(img, r).astype(np.float32).tobytes()] = (c, k, r)
    return out



def test_omniglot_layout_is_read_with_the_standard_split(omniglot):
    train = omniglot_episodes(omniglot, split="background", num_ways=3, num_shots=1, num_query=2, image_size=SIZE)
    test = omniglot_episodes(omniglot, split="evaluation", num_ways=3, num_shots=1, num_query=2, image_size=SIZE)
    assert train.class_names == ("Alpha/character01", "Alpha/character02", "Alpha/character03",
                                 "Beta/character01", "Beta/character02", "Beta/character03")
    assert test.class_names == ("Gamma/character01", "Gamma/character02")
    assert (train.num_classes, test.num_classes) == (24, 8)  # with 90°, 180°, 270° rotations
    assert train.images.shape == (6, DRAWINGS, SIZE, SIZE, 1) and train.images.dtype == np.uint8
    np.testing.assert_array_equal(train.images[4, 2, :, :, 0], 255 - _drawing(4, 2))  # inverted: ink is 255
    flat = omniglot_episodes(omniglot / "images_evaluation", split=None, num_ways=2, num_query=1, image_size=SIZE)
    np.testing.assert_array_equal(flat.images, test.images)


def test_episodes_have_distinct_classes_consistent_labels_and_distinct_images(omniglot):
    src = omniglot_episodes(omniglot, split="background", num_ways=3, num_shots=2, num_query=2, image_size=SIZE)
    catalogue = _catalogue(range(6))
    tasks = src.sample(jax.random.key(0), 200)
    assert tasks.x_support.shape == (200, 6, SIZE * SIZE) and tasks.x_query.shape == (200, 6, SIZE * SIZE)
    seen_classes, seen_rotations = set(), set()
    for t in range(200):
        label_class, used = {}, set()
        for side in ("support", "query"):
            x = np.asarray(getattr(tasks, f"x_{side}")[t]).reshape(-1, SIZE, SIZE)
            y = np.asarray(getattr(tasks, f"y_{side}")[t])
            assert y.tolist() == [0, 1, 2, 0, 1, 2]  # point i has label i mod N
            for img, label in zip(x, y):
                c, k, r = catalogue[img.astype(np.float32).tobytes()]  # KeyError: an image that is no drawing
                assert label_class.setdefault(int(label), (c, r)) == (c, r)  # one class (and rotation) per label
                assert (c, k, r) not in used  # K + Q distinct drawings per class
                used.add((c, k, r))
        assert len(set(label_class.values())) == 3  # N distinct classes
        seen_classes |= set(label_class.values())
        seen_rotations |= {r for _, r in label_class.values()}
    assert seen_rotations == {0, 1, 2, 3} and len(seen_classes) == 24


def test_episodes_are_reproducible_and_class_frequencies_are_uniform(omniglot):
    src = omniglot_episodes(omniglot, split="evaluation", num_ways=2, num_shots=1, num_query=1, image_size=SIZE,
                            rotations=False)
    a, b = src.sample(jax.random.key(3), 50), src.sample(jax.random.key(3), 50)
    np.testing.assert_array_equal(np.asarray(a.x_support), np.asarray(b.x_support))
    tasks = src.sample(jax.random.key(4), 2000)
    first = np.asarray(tasks.x_support[:, 0]).reshape(-1, SIZE, SIZE)
    is_char0 = np.array([any(np.allclose(img, 1.0 - _drawing(6, k) / 255.0) for k in range(DRAWINGS))
                         for img in first])
    # label 0 is character 6 or 7 with probability 1/2 each: 2000 draws, 5 standard deviations ≈ ±0.056
    assert abs(is_char0.mean() - 0.5) < 0.056


def test_a_fixed_set_of_episodes_trains_like_a_family(omniglot):
    src = omniglot_episodes(omniglot, num_ways=3, num_shots=1, num_query=2, image_size=SIZE)
    fixed = src.fixed(jax.random.key(0), 10)
    assert fixed.num_tasks == 10 and not fixed.regression
    batch = fixed.sample(jax.random.key(1), 4)
    assert batch.x_query.shape == (4, 6, SIZE * SIZE) and batch.y_query.dtype == np.int32


def test_digits_train_and_test_episodes_use_disjoint_digits():
    images, counts = load_digits_array()
    assert images.shape[1:] == (counts.max(), 8, 8, 1) and counts.sum() == 1797
    assert images.min() == 0.0 and images.max() == 1.0
    lookup = {}
    for d in range(10):
        for i in range(counts[d]):
            for r in range(4):
                lookup[np.rot90(images[d, i, :, :, 0], r).astype(np.float32).tobytes()] = d
    for digits, src in ((TRAIN_DIGITS, digits_episodes(TRAIN_DIGITS, num_query=3)),
                        (TEST_DIGITS, digits_episodes(TEST_DIGITS, num_query=3))):
        assert src.num_classes == 20
        t = src.sample(jax.random.key(0), 30)
        xs = np.concatenate([np.asarray(t.x_support), np.asarray(t.x_query)], axis=1).reshape(-1, 8, 8)
        found = {lookup[x.astype(np.float32).tobytes()] for x in xs}
        assert found <= set(digits) and len(found) == len(digits)


@pytest.mark.parametrize("kwargs, message", [
    ({"images": np.zeros((3, 4, 5, 5), np.uint8)}, r"images has shape \(3, 4, 5, 5\); expected \(classes, images"),
    ({"images": np.zeros((3, 4, 5, 6, 1), np.uint8)}, r"rotations=True with images of 5×6; expected square images"),
    ({"num_shots": 3, "num_query": 2}, r"class 1 has 4 images; expected at least num_shots \+ num_query = 5"),
    ({"num_ways": 13}, r"num_ways=13; expected at most the 12 classes \(with rotations\)"),
    ({"num_ways": 1}, r"num_ways=1; expected an integer >= 2"),
    ({"images": np.zeros((3, 4, 5, 5, 1), np.int64)}, r"images has dtype int64; expected uint8"),
])
def test_bad_episode_settings_are_errors(kwargs, message):
    args = {"images": np.zeros((3, 6, 5, 5, 1), np.uint8), "counts": np.array([6, 4, 6]), "num_ways": 2,
            "num_shots": 1, "num_query": 1}
    if "images" in kwargs:
        args.pop("counts")
    with pytest.raises(ValueError, match=message):
        ImageEpisodes(**(args | kwargs))


def test_folder_errors(omniglot, tmp_path):
    with pytest.raises(ValueError, match=r"images_background' does not exist; expected the Omniglot layout"):
        omniglot_episodes(tmp_path)
    with pytest.raises(ValueError, match=r"split='train'; expected one of \['background', 'evaluation'\]"):
        omniglot_episodes(omniglot, split="train")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"has no GROUP/CLASS/ folders with images"):
        omniglot_episodes(tmp_path / "empty", split=None)
    with pytest.raises(ValueError, match=r"digits=\(3, 3\); expected distinct digits"):
        digits_episodes((3, 3))
