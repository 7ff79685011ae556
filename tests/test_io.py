"""Saving and loading parameter pytrees: structure, values, dtypes, metadata, atomic writes."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hbmeta as hb
from hbmeta import load_params, save_params
from hbmeta.base.files import atomic_write


def _tree():
    return {
        "layers": [{"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.array([0.5, -1.0, 2.0])}, {"w": jnp.ones((3, 1))}],
        "extra": (jnp.array([1, 2, 3], dtype=jnp.int32), None, jnp.array(True)),
        "scale": jnp.float32(0.25),
        "empty": {},
    }


def test_round_trip_structure_values_and_dtypes(tmp_path):
    path = tmp_path / "theta.npz"
    params = _tree()
    save_params(path, params)
    loaded = load_params(path)
    assert jax.tree.structure(loaded) == jax.tree.structure(params)
    assert isinstance(loaded["layers"], list) and isinstance(loaded["extra"], tuple)
    assert loaded["extra"][1] is None and loaded["empty"] == {}
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


def test_metadata_and_network_round_trip(tmp_path):
    net = hb.mlp((1, 8, 1))
    theta = net.init(jax.random.key(0))
    path = os.path.join(tmp_path, "sub", "maml.npz")  # the folder is created
    save_params(path, theta, iterations=70000, step_size=0.01, family="Sinusoid")
    loaded, meta = load_params(path, with_metadata=True)
    assert meta == {"iterations": 70000, "step_size": 0.01, "family": "Sinusoid"}
    x = jnp.linspace(-5, 5, 7)[:, None]
    np.testing.assert_array_equal(net.apply(loaded, x), net.apply(theta, x))


def test_writes_are_atomic(tmp_path):
    path = tmp_path / "p.npz"
    save_params(path, {"a": jnp.zeros(2)})
    save_params(path, {"a": jnp.ones(3)})  # overwrite in place
    np.testing.assert_array_equal(load_params(path)["a"], np.ones(3))
    assert sorted(os.listdir(tmp_path)) == ["p.npz"]  # no temporary files left

    def failing(tmp):
        with open(tmp, "wb") as fh:
            fh.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, failing)
    np.testing.assert_array_equal(load_params(path)["a"], np.ones(3))  # the old file is intact
    assert sorted(os.listdir(tmp_path)) == ["p.npz"]


def test_bad_inputs(tmp_path):
    from typing import NamedTuple

    class Pair(NamedTuple):
        a: jax.Array
        b: jax.Array

    with pytest.raises(ValueError, match="params contain a Pair"):
        save_params(tmp_path / "x.npz", {"p": Pair(jnp.zeros(1), jnp.zeros(1))})
    with pytest.raises(ValueError, match="params contain a str"):
        save_params(tmp_path / "x.npz", {"p": "text"})
    assert not os.listdir(tmp_path)  # nothing written when the tree is refused
    with pytest.raises(ValueError, match="does not exist"):
        load_params(tmp_path / "missing.npz")
    np.savez(tmp_path / "plain.npz", a=np.zeros(2))
    with pytest.raises(ValueError, match="has no __structure__ entry"):
        load_params(tmp_path / "plain.npz")
