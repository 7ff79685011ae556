"""NetCDF files of ArviZ data: written atomically (and, from a posterior, in blocks), read fully and checked.

:func:`to_netcdf` writes the file of ``to_arviz(posterior, tasks)`` without ever holding its two large groups
(the posterior predictive and the per-task log-likelihood, both draws × tasks × …) in memory: they are computed
and written one block of draws × tasks at a time. The reading branches on the ArviZ version like
:mod:`hbmeta.diagnostics.arviz` (arviz 0.23 ``InferenceData``, arviz ≥ 1.0 ``DataTree``).
"""

from __future__ import annotations

import datetime
import os

import jax
import numpy as np

from hbmeta.base.files import BadFileError, atomic_write, check_readable
from hbmeta.base.validate import check_positive_int, check_type
from hbmeta.diagnostics.arviz import _az, _check_key, _fixed_groups, _from_dict, _group, _group_names, _v1
from hbmeta.diagnostics.loglik import block_log_likelihood
from hbmeta.model.posterior import Posterior
from hbmeta.predict.predictive import Block, Predictive, predictive_blocks
from hbmeta.tasks.batch import TaskBatch


def save_netcdf(idata, path) -> str:
    """Write ArviZ data to a NetCDF file atomically (a temporary file renamed into place); returns the path."""
    path = os.fspath(path)
    atomic_write(path, lambda tmp: idata.to_netcdf(tmp))
    return path


def to_netcdf(posterior: Posterior, tasks: TaskBatch, path, *, reference=None, predictive=None, key=None,
              devices=None, draw_chunk: int = 64, task_chunk: int = 32):
    """Write the NetCDF file of ``to_arviz(posterior, tasks, ...)`` block by block; returns the small groups.

    The file holds the same groups and values as ``save_netcdf(to_arviz(posterior, tasks, reference=...,
    predictive=..., key=...), path)``. The two groups that grow with draws × tasks × points,
    ``posterior_predictive`` (``y``) and ``log_likelihood`` (``y`` per task), are computed and written
    ``draw_chunk`` flat draws × ``task_chunk`` tasks at a time: when ``predictive`` is None the predictive is
    sampled block by block (:func:`~hbmeta.predict.predictive.predictive_blocks`, the keys of
    :func:`~hbmeta.sample_predictive`) and never held whole; when it is given it is read block by block (no
    second copy). Memory beyond the inputs is one block: about ``4 · D · B · M · o`` bytes for ``y`` and
    five float64 temporaries of that size for the log-likelihood. The file is written to a temporary name
    and renamed into place, so it is complete or absent.

    Returns the ArviZ data of every other group (``posterior``, ``sample_stats``, ``observed_data``,
    ``constant_data``): what :func:`~hbmeta.diagnose` and the trace plots need, without reading the file back.

    Example:
        >>> import jax, os, tempfile
        >>> import hbmeta as hb
        >>> net = hb.mlp((1, 8, 1)); theta = net.init(jax.random.key(0))
        >>> spec = hb.ModelSpec(hb.GradientSteps(net.apply), theta, likelihood=hb.NormalLikelihood(noise=0.5))
        >>> flat = spec.ravel(theta) + 0.01 * jax.random.normal(jax.random.key(1), (2, 10, spec.num_params))
        >>> post = hb.Posterior({"theta": flat}, spec, "custom", {})
        >>> path = os.path.join(tempfile.mkdtemp(), "posterior.nc")
        >>> small = hb.to_netcdf(post, hb.Sinusoid().sample(jax.random.key(2), 3), path, draw_chunk=8)
        >>> dict(hb.load_netcdf(path).log_likelihood["y"].sizes)
        {'chain': 2, 'draw': 10, 'task': 3}
    """
    check_type("posterior", posterior, Posterior)
    check_type("tasks", tasks, TaskBatch)
    draw_chunk = check_positive_int("draw_chunk", draw_chunk)
    task_chunk = check_positive_int("task_chunk", task_chunk)
    path = os.fspath(path)
    k_pred, k_ref = jax.random.split(_check_key(key))
    C, S, T, M = posterior.num_chains, posterior.num_draws, tasks.num_tasks, tasks.x_query.shape[1]
    regression = posterior.spec.likelihood.regression
    if predictive is None:
        blocks = predictive_blocks(posterior, tasks, key=k_pred, draw_chunk=draw_chunk, task_chunk=task_chunk,
                                   devices=devices)
        sigma = blocks.sigma[: C * S] if regression else None
    else:
        if not isinstance(predictive, Predictive) or predictive.y.shape[:4] != (C, S, T, M):
            got = getattr(getattr(predictive, "y", None), "shape", None)
            raise ValueError(f"predictive has y of shape {got}; expected a hbmeta.Predictive with leading shape "
                             f"{(C, S, T, M)}")
        blocks, sigma = _blocks_of(predictive, draw_chunk, task_chunk)
    groups, coords, dims, attrs = _fixed_groups(posterior, tasks, reference, k_ref)
    fixed = _from_dict(groups, coords=coords, dims=dims, attrs=attrs)

    def write(tmp):
        fixed.to_netcdf(tmp)
        _append_blocks(tmp, blocks, sigma, tasks, shape=(C, S, T, M), regression=regression)

    atomic_write(path, write)
    return fixed


def _blocks_of(pred: Predictive, draw_chunk: int, task_chunk: int):
    """Blocks (views) of a predictive already in memory, as :func:`predictive_blocks` gives them."""
    C, S, T = pred.y.shape[:3]
    N = C * S
    flat = lambda a: None if a is None else np.asarray(a).reshape((N, T) + np.shape(a)[3:])
    first, y = flat(pred.mean if pred.regression else pred.probs), flat(pred.y)
    noise = None if pred.noise is None else np.asarray(pred.noise)
    per_point = noise is not None and noise.ndim > 2
    sd = flat(noise) if per_point else None
    sigma = None if noise is None or per_point else noise.reshape(N)

    def steps():
        for i in range(0, N, draw_chunk):
            for j in range(0, T, task_chunk):
                rows, cols = slice(i, min(i + draw_chunk, N)), slice(j, min(j + task_chunk, T))
                yield Block(rows, cols, first[rows, cols], y[rows, cols], None, None if sd is None else sd[rows, cols])

    return steps(), sigma


def _append_blocks(path, blocks, sigma, tasks, *, shape, regression):
    """Add the ``log_likelihood`` and ``posterior_predictive`` groups to a NetCDF file, one block at a time."""
    import h5netcdf  # ArviZ's own NetCDF engine (installed with it)

    C, S, T, M = shape
    stamp = {"created_at": datetime.datetime.now(datetime.UTC).isoformat(),
             "arviz_version": getattr(_az(), "__version__", "")}
    with h5netcdf.File(path, "a") as f:
        ll = _new_group(f, "log_likelihood", {"chain": C, "draw": S, "task": T}, stamp)
        ll_y = ll.create_variable("y", ("chain", "draw", "task"), np.float64, fillvalue=np.nan, compression="gzip",
                                  chunks=(1, min(S, 256), min(T, 64)))
        pp = y_var = None
        for b in blocks:
            if pp is None:  # the output shape and dtype come from the first block
                sizes = {"chain": C, "draw": S, "task": T, "point": M}
                if regression:
                    sizes["output"] = b.y.shape[-1]
                pp = _new_group(f, "posterior_predictive", sizes, stamp)
                fill = {"fillvalue": np.asarray(np.nan, b.y.dtype)} if b.y.dtype.kind == "f" else {}
                y_var = pp.create_variable("y", tuple(sizes), b.y.dtype, compression="gzip",
                                           chunks=(1, min(S, 64), min(T, 32)) + tuple(sizes.values())[3:], **fill)
            if b.sd is not None:
                sd = b.sd
            else:
                sd = sigma[b.draws] if regression else None
            ll_block = block_log_likelihood(b.first, sd, tasks, b.tasks)
            _put(ll_y, b.draws, b.tasks, ll_block, S)
            _put(y_var, b.draws, b.tasks, b.y, S)


def _new_group(f, name, sizes, attrs):
    g = f.create_group(name)
    g.dimensions = sizes
    for dim, n in sizes.items():
        g.create_variable(dim, (dim,), np.int64, data=np.arange(n), compression="gzip")
    g.attrs.update(attrs)
    return g


def _put(var, draws: slice, task_slice: slice, values, num_draws: int):
    """Write rows ``draws`` of the flat (chain · draw) axis into a ``(chain, draw, task, ...)`` variable."""
    i = draws.start
    while i < draws.stop:
        c, d = divmod(i, num_draws)
        n = min(draws.stop - i, num_draws - d)
        var[c, d : d + n, task_slice] = values[i - draws.start : i - draws.start + n]
        i += n


def load_netcdf(path, *, num_parameters: int | None = None):
    """Read ArviZ data written by :func:`save_netcdf`, fully into memory (the file is not held open).

    The file is checked before it is returned: it must be a NetCDF/HDF5 file
    (not truncated, emptied or replaced), written by hbmeta, with a
    ``posterior`` group whose ``theta`` is a real ``(chain, draw, parameter)``
    array, of ``num_parameters`` parameters when that is given (a file from
    another run is refused).

    Raises:
        hbmeta.BadFileError: (a ``ValueError``) one line naming the file and what is wrong.
    """
    path = check_readable(path, "NetCDF file")
    az = _az()
    try:
        data = _read_netcdf(az, path)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, IndexError) as e:
        reason = " ".join(str(e).split())[:160] or type(e).__name__
        raise BadFileError(path, f"is not a readable NetCDF (HDF5) file: truncated, damaged or another kind of "
                                 f"file ({reason})") from None
    names = _group_names(data)
    if "posterior" not in names:
        raise BadFileError(path, f"has groups {names}; expected ArviZ data written by hbmeta (a posterior group)")
    attrs = dict(getattr(data, "attrs", None) or {})
    if attrs.get("inference_library") != "hbmeta":
        raise BadFileError(path, f"was written by {attrs.get('inference_library', 'an unknown library')!r}; "
                                 "expected a file written by hbmeta (hbmeta run, save_netcdf)")
    theta = _group(data, "posterior").get("theta")
    if theta is None or theta.dtype.kind != "f" or theta.ndim != 3:
        got = "no theta" if theta is None else f"theta of {theta.dtype} with dims {tuple(theta.dims)}"
        raise BadFileError(path, f"has {got} in its posterior group; expected real theta over (chain, draw, parameter)")
    if num_parameters is not None and theta.shape[-1] != num_parameters:
        raise BadFileError(path, f"holds theta of {theta.shape[-1]} parameters; expected {num_parameters} "
                                 "(a file from another run or model)")
    return data


def _read_netcdf(az, path):
    if _v1(az):  # a DataTree; read fully so that the file is closed
        if hasattr(az, "from_netcdf"):
            data = az.from_netcdf(path)
        else:
            import xarray  # only with ArviZ >= 1, which brings it

            data = xarray.open_datatree(path)
        return data.load() if hasattr(data, "load") else data
    with az.rc_context({"data.load": "eager"}):
        return az.from_netcdf(path)
