"""Every file hbmeta reads, damaged every way: one line naming the file, exit status 2, nothing half-loaded.

The files: a run's ``config.toml``, ``meta_params.npz``, ``posterior.npz``, ``posterior.nc`` and
``heldout.nc``, and a user's support file (``.csv``, ``.npz``) and tasks file (``.npz``). The damages:
truncated to half its bytes, emptied, replaced by random bytes of the same length, rewritten with
values of the wrong type, and replaced by the same file of an incompatible run (a linear model with 4
inputs instead of 3, so another parameter count). Run files are read through the command line
(``hbmeta predict``; ``hbmeta diagnose`` for posterior.nc) and through the library (``load_run``,
``load_netcdf``). ``python tests/test_bad_files.py`` regenerates the table of docs/reliability.md from
these very cases.
"""

import contextlib
import io
import os
import re
import shutil
import sys
import zipfile

import numpy as np
import pytest

import hbmeta as hb
from hbmeta.cli.main import main
from hbmeta.cli.userdata import read_support, read_tasks
from hbmeta.run.config import load_config
from hbmeta.run.pipeline import run_pipeline

RUN_FILES = ("config.toml", "meta_params.npz", "posterior.npz", "posterior.nc", "heldout.nc")
USER_FILES = ("support.csv", "support.npz", "tasks.npz")
DAMAGES = ("truncated", "emptied", "random bytes", "wrong dtype", "incompatible run")
# What each file's message must say (beside its name), per damage.
EXPECTED = {
    "emptied": "is empty",
    "truncated": {"config.toml": "config.toml", "support.csv": "line", "posterior.nc": "not a readable NetCDF",
                  "heldout.nc": "not a readable NetCDF"},
    "random bytes": {"config.toml": "malformed TOML", "support.csv": "not UTF-8", "posterior.nc": "not a readable",
                     "heldout.nc": "not a readable"},
    "wrong dtype": {"config.toml": "run.seed", "support.csv": "not a number", "posterior.nc": "theta of int",
                    "heldout.nc": "theta of int", "posterior.npz": "expected real numbers"},
    "incompatible run": {"config.toml": "differs from the file this run wrote", "support.csv": "columns",
                         "support.npz": "expected (points, 3)", "tasks.npz": "expected 3",
                         "posterior.nc": "expected 3", "heldout.nc": "expected 3",
                         "meta_params.npz": "expected 3", "posterior.npz": "expected (chain, draw, 3)"},
}
NPZ_DEFAULT = {"truncated": "", "random bytes": "not an .npz (zip) archive", "wrong dtype": "complex"}


def _make_runs(base):
    """A linear toy run (3 inputs) and an incompatible one (4 inputs), and valid user files beside them."""
    os.makedirs(base, exist_ok=True)
    for name, dim in (("run", 3), ("other", 4)):
        cfg = load_config("linear", ["run.progress=false", f"family.dim={dim}"], toy=True)
        with contextlib.redirect_stdout(io.StringIO()):
            run_pipeline(cfg, out=os.path.join(base, name))
    rng = np.random.default_rng(0)
    for name, dim in (("", 3), ("other_", 4)):
        x = rng.normal(size=(5, dim))
        np.savetxt(os.path.join(base, f"{name}support.csv"), np.column_stack([x, x.sum(1)]), delimiter=",",
                   header=",".join([f"x{i}" for i in range(dim)] + ["y"]), comments="")
        np.savez(os.path.join(base, f"{name}support.npz"), x=x, y=x.sum(1))
        xs, xq = rng.normal(size=(6, 5, dim)), rng.normal(size=(6, 8, dim))
        np.savez(os.path.join(base, f"{name}tasks.npz"), x_support=xs, y_support=xs.sum(-1, keepdims=True),
                 x_query=xq, y_query=xq.sum(-1, keepdims=True))


def _read(path, mode="rb"):
    with open(path, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
        return fh.read()


def _write(path, data):
    with open(path, "wb" if isinstance(data, bytes) else "w", **({} if isinstance(data, bytes) else
                                                                  {"encoding": "utf-8"})) as fh:
        fh.write(data)


def _wrong_dtype(path):
    name = os.path.basename(path)
    if name == "config.toml":
        _write(path, re.sub(r"(?m)^seed = \d+", 'seed = "zero"', _read(path, "r"), count=1))
    elif name == "support.csv":
        lines = _read(path, "r").splitlines()
        lines[2] = "a,b,c,d"
        _write(path, "\n".join(lines) + "\n")
    elif name.endswith(".nc"):
        idata = hb.load_netcdf(path)
        idata.posterior["theta"] = (idata.posterior["theta"] * 1000).astype(np.int64)
        os.remove(path)
        idata.to_netcdf(path)
    else:
        with np.load(path) as data:
            arrays = {k: (v if v.dtype.kind == "U" else v.astype(np.complex64)) for k, v in data.items()}
        np.savez(path, **arrays)


def damage(path, how, other=None):
    """Damage the file at ``path`` in place: one of :data:`DAMAGES` (``other``: the incompatible run's file)."""
    data = _read(path)
    if how == "truncated":
        _write(path, data[: len(data) // 2])
    elif how == "emptied":
        _write(path, b"")
    elif how == "random bytes":
        _write(path, np.random.default_rng(1).integers(0, 256, len(data), dtype=np.uint8).tobytes())
    elif how == "wrong dtype":
        _wrong_dtype(path)
    else:
        shutil.copyfile(other, path)


def _cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def case(base, work, file, how):
    """Damage a copy of ``file`` and read it through the command line and the library.

    Returns ``(path, exit status, stderr, library error)``.
    """
    if file in RUN_FILES:
        run = os.path.join(work, "run")
        shutil.copytree(os.path.join(base, "run"), run)
        path = os.path.join(run, file)
        damage(path, how, os.path.join(base, "other", file))
        if file == "heldout.nc":  # no command reads heldout.nc: the library's reader is the whole interface
            argv = None
        elif file == "posterior.nc":
            argv = ["diagnose", run, "--out", os.path.join(work, "pictures")]
        else:
            argv = ["predict", run, "--support", os.path.join(base, "support.csv"),
                    "--out", os.path.join(work, "predictions.csv")]
        reader = (lambda: hb.load_netcdf(path, num_parameters=3)) if file.endswith(".nc") else \
            (lambda: hb.load_run(run))
    else:
        path = os.path.join(work, file)
        shutil.copyfile(os.path.join(base, file), path)
        damage(path, how, os.path.join(base, f"other_{file}"))
        if file == "tasks.npz":
            argv = ["fit", "linear", "--toy", "-q", "--method", "maml", "--tasks", path,
                    "--out", os.path.join(work, "fit")]
            reader = lambda: read_tasks(path, input_dim=3)
        else:
            argv = ["predict", os.path.join(base, "run"), "--support", path,
                    "--out", os.path.join(work, "predictions.csv")]
            reader = lambda: read_support(path, input_dim=3, regression=True)
    if argv is not None and "--out" in argv and argv[-1].endswith(".csv"):
        with open(argv[-1], "w") as fh:
            fh.write("an earlier file\n")
    rc, _, err = _cli(argv) if argv is not None else (None, "", "")
    try:
        reader()
        library = None
    except ValueError as e:
        library = e
    return path, rc, err, library


def _expected(file, how):
    want = EXPECTED[how]
    if isinstance(want, str):
        return want
    return want.get(file, NPZ_DEFAULT.get(how, ""))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("bad"))
    _make_runs(base)
    return base


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("file", RUN_FILES + USER_FILES)
def test_bad_file_gives_one_line_naming_it(base, tmp_path, file, how):
    path, rc, err, library = case(base, str(tmp_path), file, how)
    want = _expected(file, how)
    assert isinstance(library, ValueError) and path in str(library) and want in str(library), library
    assert "\n" not in str(library)
    if rc is not None:
        assert rc == 2, err
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("hbmeta: error: ") and "Traceback" not in err, err
        assert path in lines[0] and want in lines[0], lines[0]
    # nothing was written over: the earlier output is intact and no directory of pictures or run appeared
    predictions = tmp_path / "predictions.csv"
    if predictions.exists():
        assert predictions.read_text() == "an earlier file\n"
    assert not (tmp_path / "pictures").exists() and not (tmp_path / "fit").exists()


def test_the_undamaged_files_load(base, tmp_path):
    """The cases above fail because of the damage: the same reads of the intact files succeed."""
    run = hb.load_run(os.path.join(base, "run"))
    assert run.posterior.samples["theta"].shape[-1] == 3
    assert hb.load_netcdf(os.path.join(base, "run", "heldout.nc"), num_parameters=3).posterior["theta"].shape[-1] == 3
    x, y = read_support(os.path.join(base, "support.npz"), input_dim=3, regression=True)
    assert x.shape == (5, 3) and y.shape == (5, 1)
    assert read_tasks(os.path.join(base, "tasks.npz"), input_dim=3).num_tasks == 6
    rc, out, err = _cli(["predict", os.path.join(base, "run"), "--support", os.path.join(base, "support.csv")])
    assert rc == 0 and out.startswith("x0,x1,x2,mean,sd"), err


def test_huge_declared_shape_is_refused_before_allocation(tmp_path):
    """An .npy header may declare any shape: a 10¹⁵-element array in a 200-byte file is refused, not allocated."""
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w") as z:  # a well-formed header that declares 10¹⁵ float64 values
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10**15,)})
        z.writestr("x.npy", header.getvalue() + b"\0" * 64)
        z.writestr("y.npy", header.getvalue())
    with pytest.raises(hb.BadFileError, match=r"declares shape \(1000000000000000,\) .* truncated or damaged"):
        read_support(path, input_dim=1, regression=True)


def _doc_table(base, work):
    rows = ["| file | damage | message |", "|---|---|---|"]
    for file in RUN_FILES + USER_FILES:
        for how in DAMAGES:
            d = os.path.join(work, f"{file}-{how}".replace(" ", "_"))
            os.makedirs(d)
            path, rc, err, library = case(base, d, file, how)
            text = err.strip() if rc is not None else f"ValueError: {library}"
            text = text.replace(os.path.dirname(path) + os.sep, "RUN/" if file in RUN_FILES else "")
            rows.append(f"| `{file}` | {how} | `{text.replace('|', '/')}` |")
    return "\n".join(rows)


if __name__ == "__main__":  # print the table of docs/reliability.md
    import tempfile

    root = tempfile.mkdtemp()
    _make_runs(os.path.join(root, "base"))
    sys.stdout.write(_doc_table(os.path.join(root, "base"), os.path.join(root, "work")) + "\n")
