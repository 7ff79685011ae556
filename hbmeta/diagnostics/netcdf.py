"""NetCDF files of ArviZ data: written atomically, read fully and checked before use.

The reading branches on the ArviZ version like :mod:`hbmeta.diagnostics.arviz`
(arviz 0.23 ``InferenceData``, arviz ≥ 1.0 ``DataTree``).
"""

from __future__ import annotations

import os

from hbmeta.base.files import BadFileError, atomic_write, check_readable
from hbmeta.diagnostics.arviz import _az, _group, _group_names, _v1


def save_netcdf(idata, path) -> str:
    """Write ArviZ data to a NetCDF file atomically (a temporary file renamed into place); returns the path."""
    path = os.fspath(path)
    atomic_write(path, lambda tmp: idata.to_netcdf(tmp))
    return path


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
