"""Property-based and fuzz tests (hypothesis): task batches and masks, the configuration, the file readers.

Each property runs a bounded, derandomised number of examples (the same ones in every CI run), so the
module takes seconds.
"""

import dataclasses
import io
import math
import os
import tempfile
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hbmeta import GradientSteps, linear, make_tasks
from hbmeta.base.files import BadFileError, load_params, read_npz
from hbmeta.cli.userdata import read_query, read_support, read_tasks
from hbmeta.run.config import SECTIONS, from_dict, load_config
from hbmeta.tasks.batch import TaskBatch

BOUNDED = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# --- task batches and masks ----------------------------------------------------------------------------

T, K, M, D, ALPHA = 3, 5, 4, 2, 0.1
RULE = GradientSteps(linear().apply, step_size=ALPHA)
_PADDED_LOSSES = jax.jit(lambda w, tasks: RULE.query_losses({"w": w}, tasks))


def _reference_loss(w, xs, ys, xq, yq):
    """One gradient step of the linear model on the real support points, then the query MSE (closed form)."""
    grad = 2.0 / len(xs) * xs.T @ (xs @ w - ys)
    phi = w - ALPHA * grad
    return float(np.mean((xq @ phi - yq) ** 2))


finite = st.floats(-3, 3, allow_nan=False, width=32)


@BOUNDED
@given(xs=hnp.arrays(np.float32, (T, K, D), elements=finite), ys=hnp.arrays(np.float32, (T, K), elements=finite),
       xq=hnp.arrays(np.float32, (T, M, D), elements=finite), yq=hnp.arrays(np.float32, (T, M), elements=finite),
       ms=hnp.arrays(bool, (T, K)), mq=hnp.arrays(bool, (T, M)), w=hnp.arrays(np.float32, (D,), elements=finite),
       junk=st.floats(-1e3, 1e3, allow_nan=False, width=32))
def test_padded_losses_equal_the_unpadded_ones_or_the_mask_is_refused(xs, ys, xq, yq, ms, mq, w, junk):
    # padded points hold arbitrary values: they must not matter
    xs, ys = np.where(ms[..., None], xs, junk), np.where(ms, ys, junk)
    xq, yq = np.where(mq[..., None], xq, junk), np.where(mq, yq, junk)
    try:
        tasks = make_tasks(xs, ys[..., None], xq, yq[..., None], support_mask=ms, query_mask=mq)
    except ValueError as e:
        assert not ms.any(axis=1).all() and "support_mask leaves tasks" in str(e)
        return
    assert ms.any(axis=1).all()
    padded = np.asarray(_PADDED_LOSSES(jnp.asarray(w), tasks))
    for j in range(T):
        if not mq[j].any():
            assert padded[j] == 0.0  # no query point: the masked mean is 0, never NaN
            continue
        want = _reference_loss(w.astype(np.float64), xs[j][ms[j]], ys[j][ms[j]], xq[j][mq[j]], yq[j][mq[j]])
        np.testing.assert_allclose(padded[j], want, rtol=2e-4, atol=2e-4)


shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=3)
dtypes = st.sampled_from([np.float32, np.float64, np.int32, bool])


@st.composite
def task_arrays(draw):
    """Arrays of the right shapes for make_tasks about half the time, else any shapes, dtypes and values."""
    t, k, m, d = (draw(st.integers(0 if draw(st.booleans()) else 1, 3)) for _ in range(4))
    right = {"xs": (t, k, d), "ys": (t, k, 1), "xq": (t, m, d), "yq": (t, m, 1), "ms": (t, k), "mq": (t, m)}
    out = {}
    for name, shape in right.items():
        kind = draw(st.sampled_from(["right", "right", "any", "none"] if name in ("ms", "mq") else
                                    ["right", "right", "right", "any", "other"]))
        if kind == "none":
            out[name] = None
        elif kind == "other":
            out[name] = draw(st.one_of(st.none(), st.text(max_size=3), st.lists(st.integers(), max_size=3)))
        else:
            dtype = bool if name in ("ms", "mq") and draw(st.booleans()) else draw(dtypes)
            values = finite if kind == "right" and dtype in (np.float32, np.float64) and draw(st.booleans()) else None
            out[name] = draw(hnp.arrays(dtype, shape if kind == "right" else draw(shapes), elements=values))
    return out


@settings(BOUNDED, max_examples=150)
@given(arrays=task_arrays())
def test_any_arrays_give_a_task_batch_or_a_value_error(arrays):
    a = arrays
    try:
        tasks = make_tasks(a["xs"], a["ys"], a["xq"], a["yq"], support_mask=a["ms"], query_mask=a["mq"])
    except ValueError as e:
        assert "\n" not in str(e) and str(e)
        return
    assert isinstance(tasks, TaskBatch) and tasks.x_support.ndim == 3 and tasks.num_tasks >= 1
    assert tasks.x_support.shape[1] >= 1 and np.isfinite(np.asarray(tasks.x_support)).all()
    if tasks.support_mask is not None:
        assert np.asarray(tasks.support_mask).any(axis=1).all()


# --- the configuration parser --------------------------------------------------------------------------

KNOWN = {name: [f.name for f in dataclasses.fields(cls)] for name, cls in SECTIONS.items()}
keys = st.one_of(st.sampled_from(sorted({k for ks in KNOWN.values() for k in ks})), st.text(max_size=6))
values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(), st.text(max_size=8),
              st.sampled_from(["nuts", "svi", "sinusoid", "linear", "mlp", "maml", "inferred", "relu"])),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=3)),
    max_leaves=6,
)
sections = st.dictionaries(st.one_of(st.sampled_from(["family", *SECTIONS]), st.text(max_size=5)),
                           st.one_of(st.dictionaries(keys, values, max_size=4), values), max_size=4)


def _one_line_value_error(call):
    try:
        return call()
    except ValueError as e:
        assert str(e) and "\n" not in str(e), repr(e)
        return None


@BOUNDED
@given(raw=sections)
def test_any_configuration_table_is_accepted_or_refused_in_one_line(raw):
    _one_line_value_error(lambda: from_dict({k: v for k, v in raw.items() if v is not None}, where="fuzz.toml"))


@BOUNDED
@given(text=st.text(max_size=40))
def test_any_override_is_accepted_or_refused_in_one_line(text):
    _one_line_value_error(lambda: load_config("linear", [text]))


@BOUNDED
@given(data=st.binary(max_size=200))
def test_any_bytes_as_a_configuration_file_are_refused_in_one_line(data):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "c.toml")
        with open(path, "wb") as fh:
            fh.write(data)
        _one_line_value_error(lambda: load_config(path))


# --- the CSV and NPZ readers ---------------------------------------------------------------------------

def _write(data, suffix):
    fd, path = tempfile.mkstemp(suffix=suffix)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return path


@BOUNDED
@given(data=st.one_of(st.binary(max_size=300), st.text(max_size=200).map(str.encode)),
       suffix=st.sampled_from([".csv", ".npz"]))
def test_random_bytes_are_read_or_refused_with_the_file_named(data, suffix):
    path = _write(data, suffix)
    try:
        for read in (lambda: read_support(path, input_dim=1, regression=True), lambda: read_query(path, input_dim=1),
                     lambda: read_tasks(path, input_dim=1) if suffix == ".npz" else None,
                     lambda: load_params(path) if suffix == ".npz" else None):
            try:
                read()
            except ValueError as e:
                assert path in str(e) and "\n" not in str(e), repr(e)
    finally:
        os.remove(path)


def _npz_with_header(shape, descr, payload):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": descr, "fortran_order": False, "shape": shape})
        z.writestr("x.npy", header.getvalue() + payload)
        z.writestr("y.npy", header.getvalue() + payload)
    return buf.getvalue()


@BOUNDED
@given(shape=st.lists(st.integers(0, 10**12), min_size=1, max_size=4).map(tuple),
       descr=st.sampled_from(["<f8", "<f4", "<i8", "|u1"]), payload=st.binary(max_size=64))
def test_a_huge_declared_shape_is_refused_without_allocating_it(shape, descr, payload):
    path = _write(_npz_with_header(shape, descr, payload), ".npz")
    try:
        declared = math.prod(shape) * np.dtype(descr).itemsize
        try:
            arrays = read_npz(path, max_bytes=10**6)
        except BadFileError as e:
            assert path in str(e)
            assert declared > len(payload) or declared > 10**6 / 2, e
            return
        assert declared <= len(payload) and arrays["x"].shape == shape
    finally:
        os.remove(path)
