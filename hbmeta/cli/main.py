"""The ``hbmeta`` command line: run, fit, predict, diagnose, models.

Every error is one line ``hbmeta: error: ...`` on standard error with exit
status 2 (``--debug`` shows the Python traceback instead); an interrupted
command exits with 130. See docs/cli.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from hbmeta import __version__, models
from hbmeta.inference.registry import METHODS

# imports inside functions: each command imports the stages it needs in the function that runs it, so that
# `hbmeta --help`, `hbmeta run --help` and `hbmeta models` load no JAX, NumPyro, ArviZ or matplotlib.

_RUN_EXAMPLES = """examples:
  hbmeta run                                   the built-in sinusoid model (about a minute on a laptop CPU)
  hbmeta run linear                            closed-form reference: prints the distance to the exact posterior
  hbmeta run sinusoid --method svi --out runs/svi
  hbmeta run sinusoid --method nuts inference.nuts.num_samples=400 --set maml.num_iterations=20000
  hbmeta run runs/sinusoid-20250101-120000/config.toml     reproduce a run
  hbmeta run blobs --toy                       every size capped: a run in seconds
  hbmeta run linear tasks.store=my_store --method svi inference.svi.subsample_size=100
                                               many tasks from a store on disk (hbmeta.save_task_store)
"""

_FIT_EXAMPLES = """examples:
  hbmeta fit sinusoid --out runs/fit             MAML and the posterior only (no held-out evaluation)
  hbmeta fit sinusoid --tasks my_tasks.npz       your own training tasks (arrays x_support, y_support,
                                                 x_query, y_query; see docs/bring-your-own-model.md)
"""

_PREDICT_EXAMPLES = """examples:
  hbmeta predict runs/sinusoid-20250101-120000 --support my_points.csv
  hbmeta predict RUN --support points.csv --query inputs.csv --out predictions.csv --plot band.png

The support file has one point per line: the input column(s) then the target (a class label for
classification); a header line is allowed. An .npz holds arrays x (points, inputs) and y (points,).
"""

_DIAGNOSE_EXAMPLES = """examples:
  hbmeta diagnose runs/sinusoid-20250101-120000
  hbmeta diagnose RUN --out RUN/diagnose       write the trace and rank pictures there
"""


class CommandError(Exception):
    """A usage error found by the argument parser."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise CommandError(f"{message} (see `{self.prog} --help`)")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the Python traceback of an error")
    fmt = argparse.RawDescriptionHelpFormatter
    p = _Parser(prog="hbmeta", parents=[common], formatter_class=fmt,
                description="Probabilistic, hierarchical-Bayes meta-learning: MAML, then a posterior over θ.",
                epilog="examples:\n  hbmeta run                     the built-in sinusoid model\n"
                       "  hbmeta models                  the ready-made models\n"
                       "  hbmeta predict RUN --support my_points.csv\n\n"
                       "Run `hbmeta COMMAND --help` for each command's options and examples.")
    p.add_argument("--version", action="version", version=f"hbmeta {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def job(name, help_text, examples):
        s = sub.add_parser(name, parents=[common], help=help_text, description=help_text, epilog=examples,
                           formatter_class=fmt)
        s.add_argument("args", nargs="*", metavar="MODEL-or-PATH [key=value ...]",
                       help="a ready-made model (`hbmeta models`), a .toml file or a run directory "
                            "(default: sinusoid), then overrides section.key=value")
        s.add_argument("--method", choices=METHODS,
                       help="inference method (overrides inference.method)")
        s.add_argument("--out", metavar="DIR", help="run directory (new or empty; default runs/<model>-<time>)")
        s.add_argument("--seed", type=int, metavar="N", help="PRNG seed (overrides run.seed)")
        s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                       help="override one configuration key, e.g. --set inference.nuts.num_samples=100 (repeatable)")
        s.add_argument("--toy", action="store_true", default=None, help="toy size: every size capped, seconds")
        s.add_argument("-q", "--quiet", action="store_true", help="no progress output")
        s.add_argument("--distributed", action="store_true",
                       help="join the other processes of a multi-host run (jax.distributed: Slurm, Open MPI and "
                            "TPU pods are detected); process 0 writes the run (docs/scale.md)")
        return s

    run = job("run", "meta-train MAML, fit the posterior, evaluate on held-out tasks and write a run directory",
              _RUN_EXAMPLES)
    run.add_argument("--resume", metavar="RUN_OR_PARTIAL_DIR",
                     help="continue an interrupted run from its checkpoints (its directory or its hidden "
                          ".NAME.partial-PID directory); the result is the one an uninterrupted run gives")
    fit = job("fit", "meta-train MAML and fit the posterior only (optionally on your own tasks)", _FIT_EXAMPLES)
    fit.add_argument("--tasks", metavar="FILE.npz", help="your training tasks instead of the model's family")

    pr = sub.add_parser("predict", parents=[common], formatter_class=fmt, epilog=_PREDICT_EXAMPLES,
                        help="adapted predictions for your own support set from a finished run",
                        description="Adapt every posterior draw to your support set and predict query inputs.")
    pr.add_argument("run", metavar="RUN", help="a run directory written by `hbmeta run` or `hbmeta fit`")
    pr.add_argument("--support", required=True, metavar="FILE",
                    help="support set (.csv or .npz; for a run on a [data] table: a .csv/.parquet table of the new "
                         "group's rows)")
    pr.add_argument("--query", metavar="FILE", help="query inputs (.csv or .npz; default: a grid for 1-D inputs, "
                                                    "else the support inputs)")
    pr.add_argument("--out", metavar="FILE.csv", help="write the predictions here (default: standard output)")
    pr.add_argument("--plot", metavar="FILE.png", help="also draw the predictive band (1-D regression)")
    pr.add_argument("--seed", type=int, default=0, metavar="N", help="PRNG seed of the sampled targets")

    dg = sub.add_parser("diagnose", parents=[common], formatter_class=fmt, epilog=_DIAGNOSE_EXAMPLES,
                        help="convergence summary, warnings and pictures of a finished run",
                        description="The ArviZ summary on invariant functionals, warnings in plain words, "
                                    "trace and rank pictures.")
    dg.add_argument("run", metavar="RUN", help="a run directory")
    dg.add_argument("--out", metavar="DIR", help="where to write the pictures (default RUN/diagnose)")

    sub.add_parser("models", parents=[common], formatter_class=fmt, help="list the ready-made models",
                   description="List the ready-made models shipped with hbmeta (models/*.toml).",
                   epilog="examples:\n  hbmeta models\n  hbmeta run linear\n")
    return p


def _parse(argv):
    """Parse, letting ``key=value`` overrides of run and fit come after the options too."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if args.command in ("run", "fit"):
        args.args += [a for a in extra if "=" in a and not a.startswith("-")]
        extra = [a for a in extra if not ("=" in a and not a.startswith("-"))]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _split_args(args: list[str]):
    source, overrides = None, []
    for a in args:
        if "=" in a:
            overrides.append(a)
        elif source is None:
            source = a
        else:
            raise CommandError(f"two models given ({source!r} and {a!r}); expected one MODEL-or-PATH, "
                               "then overrides section.key=value")
    return source, overrides


def _use_cpu_cores() -> None:
    """One JAX CPU device per core (up to 8), so MCMC chains run in parallel; only before JAX starts."""
    import jax

    try:
        jax.config.update("jax_num_cpu_devices", max(1, min(os.cpu_count() or 1, 8)))
    except RuntimeError:
        pass  # JAX is already running in this process (e.g. main() called from Python): keep its devices


def _fast_compile() -> None:
    """Toy runs spend their time compiling, not computing: ask XLA for quicker, less optimised code.

    Only possible before JAX starts its backends (a fresh ``hbmeta`` process); a no-op otherwise.
    """
    try:
        from jax._src import xla_bridge

        if xla_bridge.backends_are_initialized():
            return
    except (ImportError, AttributeError):
        return
    from hbmeta.base.xla import with_quick_compile

    os.environ["XLA_FLAGS"] = with_quick_compile(os.environ.get("XLA_FLAGS", ""))


def _cmd_job(a, *, fit_only: bool) -> int:
    from hbmeta.run.config import load_config
    from hbmeta.run.pipeline import run_pipeline
    from hbmeta.run.rundir import RunDirectoryExists

    source, overrides = _split_args(a.args)
    if getattr(a, "resume", None):
        return _resume(a, source, overrides)
    overrides = overrides + list(a.overrides) + (["run.progress=false"] if a.quiet else [])
    # The flags as overrides that carry their own names, so an error says "--seed -1: ..."
    flags = [(f"inference.method={a.method}", f"--method {a.method}")] if a.method is not None else []
    flags += [(f"run.seed={a.seed}", f"--seed {a.seed}")] if a.seed is not None else []
    flags += [("run.toy=true", "--toy")] if a.toy else []
    cfg = load_config(source, overrides + flags)
    if cfg.run.toy:
        _fast_compile()
    _use_cpu_cores()  # both before JAX starts: reading the tasks below starts it
    if getattr(a, "distributed", False):
        from hbmeta.distributed import initialize

        initialize()
    train_tasks = None
    if getattr(a, "tasks", None) and cfg.tasks.store:
        raise CommandError(f"--tasks {a.tasks} with tasks.store = {cfg.tasks.store!r}; expected one source of "
                           "training tasks")
    if getattr(a, "tasks", None):
        from hbmeta.cli.userdata import read_tasks

        train_tasks = read_tasks(a.tasks, input_dim=cfg.family.input_dim)
    try:
        run_pipeline(cfg, out=a.out, fit_only=fit_only, train_tasks=train_tasks)
    except RunDirectoryExists as e:
        raise CommandError(f"--out {e.path!r} already exists and is not an empty directory; "
                           "expected a new directory") from None
    return 0


def _resume(a, source, overrides) -> int:
    """``hbmeta run --resume DIR``: the interrupted run's own configuration, continued from its checkpoints."""
    from hbmeta.run.config import load_config
    from hbmeta.run.pipeline import run_pipeline
    from hbmeta.run.rundir import find_partial

    given = [f for f, v in (("MODEL-or-PATH", source), ("overrides", overrides or a.overrides), ("--out", a.out),
                            ("--method", a.method), ("--seed", a.seed), ("--toy", a.toy)) if v]
    if given:
        raise CommandError(f"--resume continues a run with its own configuration; expected no {', '.join(given)}")
    final, partial = find_partial(a.resume)
    cfg = load_config(os.path.join(partial, "config.toml"), ["run.progress=false"] if a.quiet else [])
    if cfg.run.toy:
        _fast_compile()
    _use_cpu_cores()
    run_pipeline(cfg, out=final, resume=partial)
    return 0


def _cmd_predict(a) -> int:
    from hbmeta.cli.predict import predict_command

    predict_command(a.run, support=a.support, query=a.query, out=a.out, plot=a.plot, seed=a.seed)
    return 0


def _cmd_diagnose(a) -> int:
    from hbmeta.diagnostics.diagnose import diagnose
    from hbmeta.diagnostics.netcdf import load_netcdf
    from hbmeta.plots import plot_rank, plot_trace
    from hbmeta.run.rundir import check_run, verify_files

    info = check_run(a.run)
    idata = load_netcdf(os.path.join(a.run, "posterior.nc"), num_parameters=info.get("num_parameters"))
    verify_files(a.run, info, ["posterior.nc"])
    d = diagnose(idata, warn=False)
    print(d.text)
    print()
    kind = METHODS[info["method"]].kind if info.get("method") in METHODS else None
    table = d.summary
    if kind in ("iid", "particles", "point"):  # R-hat, ESS and MCSE describe Markov chains, not these draws
        table = table[[c for c in table.columns if not c.startswith(("r_hat", "ess_", "mcse_"))]]
    with _pandas_width():
        print(table.to_string(float_format=lambda v: f"{v:.4g}"))
    out = a.out or os.path.join(a.run, "diagnose")
    written = []
    if kind != "point":
        written.append(plot_trace(idata, os.path.join(out, "trace.png")))
        if kind == "mcmc":
            written.append(plot_rank(idata, os.path.join(out, "rank.png")))
    if written:
        print("\npictures: " + " ".join(written))
    return 0


class _pandas_width:
    def __enter__(self):
        import pandas as pd

        self._ctx = pd.option_context("display.width", 160, "display.max_rows", 60)
        self._ctx.__enter__()

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def _cmd_models(a) -> int:
    for name in models.names():
        print(f"{name:<16} {models.description(name)}")
    return 0


_COMMANDS = {
    "run": lambda a: _cmd_job(a, fit_only=False),
    "fit": lambda a: _cmd_job(a, fit_only=True),
    "predict": _cmd_predict,
    "diagnose": _cmd_diagnose,
    "models": _cmd_models,
}


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    if not isinstance(e, (ValueError, CommandError, OSError)):
        text = f"{type(e).__name__}: {text} (run with --debug for the traceback)"
    return text


def main(argv=None) -> int:
    """Entry point of the ``hbmeta`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        args = _parse(argv)
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("hbmeta: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:  # --help and --version exit 0 through argparse
        return int(e.code or 0) if isinstance(e.code, int) or e.code is None else 2
    except Exception as e:
        if debug:
            traceback.print_exc()
        print(f"hbmeta: error: {_one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
