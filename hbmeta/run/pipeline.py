"""The main job: meta-train MAML, fit the posterior from MAML's θ, evaluate on held-out tasks, write a run.

:func:`run_pipeline` takes a :class:`~hbmeta.run.config.Config` and does, in order:

1. draw the finite training set (|T| tasks) and the held-out tasks from the family;
2. meta-train θ with MAML (Algorithm 1) on the training set;
3. fit the posterior over θ with the configured method, started at MAML's θ;
4. sample adapted models for the held-out tasks (the posterior predictive) and
   score them (the metrics of docs/references.md), beside MAML's point estimate;
5. check convergence on invariant functionals; for the linear model, compare
   the fitted posterior with the exact Gaussian one;
6. write the run directory (ArviZ NetCDF files, meta-parameters, resolved
   configuration, metrics, summary, pictures), atomically (see ``_rundir``).

``fit_only=True`` (``hbmeta fit``) stops after step 3 (plus diagnostics), and
``train_tasks`` replaces the family's training set by the user's own tasks. With
``tasks.store`` the training tasks are those of a task store on disk (:func:`_store_plan`);
the held-out tasks still come from the family.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from typing import Any, NamedTuple

import jax
import numpy as np

from hbmeta.adaptation.stability import check_step_size
from hbmeta.base.checkpoint import Checkpointer
from hbmeta.base.files import save_params
from hbmeta.base.memory import check_memory
from hbmeta.base.validate import check_type
from hbmeta.diagnostics.diagnose import diagnose
from hbmeta.diagnostics.netcdf import to_netcdf
from hbmeta.distributed import is_main_process
from hbmeta.inference.chains import default_chunk_size
from hbmeta.inference.dispatch import infer, maml_posterior
from hbmeta.inference.ensemble import choose_member_devices, ensemble_train_size
from hbmeta.inference.holdout import TAIL_NODES
from hbmeta.maml.evaluate import divergence_message, evaluate
from hbmeta.maml.train import train_maml
from hbmeta.model.task_posterior import fit_task_hyperparameters
from hbmeta.predict.metrics import coverage_by_spread, predictive_metrics
from hbmeta.predict.predictive import predictive_bytes, sample_predictive
from hbmeta.run import build as _build
from hbmeta.run.chain_starts import member_starts
from hbmeta.run.config import Config
from hbmeta.run.report import exact_comparison, final_table, summary_text, task_scale_json, write_pictures
from hbmeta.run.rundir import RunWriter, new_run_path
from hbmeta.run.scratch import ScratchWriter
from hbmeta.run.store_plan import check_subsample_size, open_store, store_plan, store_tasks
from hbmeta.run.table_data import data_metrics, load_table_data, write_group_pictures
from hbmeta.tasks.batch import TaskBatch


class RunResult(NamedTuple):
    """What :func:`run_pipeline` returns: the run directory ``path``, ``metrics`` (as in metrics.json),
    the resolved ``config``, the ``posterior`` and MAML's ``maml_params``."""

    path: str
    metrics: dict
    config: Config
    posterior: Any
    maml_params: Any


class _Stages:
    """Prints one line per stage (``[2/5] fitting the posterior (nuts) ...``) and records timings."""

    def __init__(self, total: int, enabled: bool, stream=None):
        self.total, self.enabled, self.n = total, enabled, 0
        self.stream = sys.stderr if stream is None else stream
        self.timings: dict[str, float] = {}
        self._start = None
        self._name = None

    def start(self, name: str, text: str) -> None:
        self.stop()
        self.n += 1
        self._name, self._start = name, time.perf_counter()
        if self.enabled:
            print(f"[{self.n}/{self.total}] {text}", file=self.stream, flush=True)

    def stop(self) -> None:
        if self._name is not None:
            self.timings[self._name] = round(time.perf_counter() - self._start, 2)
            self._name = None


def _expected_draws(method: str, settings: dict) -> int | None:
    """The number of posterior draws ``method`` will give with ``settings`` (None: not known beforehand)."""
    if method == "maml":
        return 1
    if method in ("nuts", "hmc"):
        return int(settings.get("num_chains", 1)) * int(settings.get("num_samples", 0)) or None
    if method == "svi":
        return 1 if settings.get("guide") == "map" else settings.get("num_draws")
    if method == "laplace":
        return settings.get("num_draws")
    if method == "svgd":
        return settings.get("num_particles")
    if method == "ensemble":  # with the task-level posterior's tails, up to TAIL_NODES draws per member
        return settings.get("num_members") * (TAIL_NODES if settings.get("tails") else 1)
    return None


def _check_predictive_memory(method, settings, test, params, network, *, compare: bool) -> None:
    """``MemoryLimitError`` before any work when the held-out predictive (and LOO's) will not fit in memory."""
    draws = _expected_draws(method, settings)
    if draws is None:
        return
    # the method's predictive (plus MAML's, one draw, beside it) on the held-out tasks, kept for the metrics;
    # the training tasks' predictive (posterior.nc) is written block by block, never held (to_netcdf)
    if test is None:
        return
    n = draws + (1 if compare and method != "maml" else 0)
    need = predictive_bytes(n, test.num_tasks, jax.eval_shape(network.apply, params, test.x_query[0]).shape)
    check_memory(need, what=f"the held-out predictive ({draws} draws × {test.num_tasks} tasks × "
                            f"{test.x_query.shape[1]} query points)",
                 lower="the number of posterior draws (num_samples, num_draws, num_particles) or tasks.num_test")


def run_pipeline(cfg: Config, *, out=None, runs_dir="runs", fit_only=False, train_tasks=None, stream=None,
                 resume=None) -> RunResult:
    """Run the whole job of ``cfg`` and write its directory; see the module docstring.

    Args:
        cfg: a resolved configuration (:func:`~hbmeta.load_config`).
        out: the run directory (must not exist, or be empty); default
            ``runs_dir/<model>-<timestamp>``.
        fit_only: stop after the posterior (no held-out evaluation).
        train_tasks: a :class:`~hbmeta.TaskBatch` of the user's training tasks
            instead of the family's (implies no held-out evaluation; not with ``tasks.store``).
        stream: where progress and the final table go (default: progress to
            standard error, the table to standard output).
        resume: the partial directory of an interrupted run of ``cfg`` (:func:`~hbmeta.run.rundir.find_partial`;
            ``out`` is then its final path): its checkpoints are continued, and the result is the one an
            uninterrupted run gives, bit for bit on CPU. MAML training, SVI, SVGD and Laplace's MAP
            search save a checkpoint every ``run.checkpoint_every`` iterations (steps); NUTS and HMC
            after every chunk of transitions (a twentieth of the run, or ``run.checkpoint_every``
            transitions if fewer), warm-up included.

    Example:
        >>> import tempfile, os
        >>> from hbmeta import load_config, run_pipeline
        >>> cfg = load_config("linear", ["run.progress=false"], toy=True)
        >>> res = run_pipeline(cfg, out=os.path.join(tempfile.mkdtemp(), "run"))
        hbmeta: linear with nuts: 3 parameters, 8 training tasks (toy size)
          held-out metric             nuts        maml
          mse ...
        >>> sorted(res.metrics["held_out"])
        ['maml', 'nuts']
    """
    check_type("cfg", cfg, Config, hint=" (from hbmeta.load_config)")
    store, notes = None, []
    if cfg.tasks.store:  # opened and checked before any work; config.toml records its absolute path and count
        if train_tasks is not None:
            raise ValueError(f"train_tasks were given with tasks.store = {cfg.tasks.store!r}; expected one of the two")
        store = open_store(cfg)
        if cfg.tasks.num_train != store.num_tasks:
            notes.append(f"tasks.num_train = {cfg.tasks.num_train} replaced by the {store.num_tasks} tasks of "
                         f"tasks.store ({store.directory})")
        cfg = replace(cfg, tasks=replace(cfg.tasks, store=store.directory, num_train=store.num_tasks))
    eff = cfg.effective()
    if train_tasks is not None and eff.data.path:
        raise ValueError(f"train_tasks were given with a [data] table (data.path = {eff.data.path!r}); expected one of the two")
    if train_tasks is not None:
        _check_train_tasks(eff, train_tasks)
    data = load_table_data(eff) if eff.data.path else None  # a table's groups: training and held-out tasks
    objects = _build.build_objects(eff, input_dim=None if data is None else data.input_dim)  # built once
    method, keys = objects.method, objects.keys
    evaluate_held_out = not fit_only and train_tasks is None and (data is None or data.test is not None)
    devices = run_devices(eff.run.devices)
    plan = None if store is None else store_plan(eff, store, method, objects.method_settings, devices)
    num_train = (plan.num_tasks if plan is not None else data.train.tasks.num_tasks if data is not None
                 else train_tasks.num_tasks if train_tasks is not None else eff.tasks.num_train)
    check_subsample_size(eff, method, objects.method_settings, num_train)
    if method == "ensemble":  # a device count this machine cannot give fails here, before any work
        try:
            choose_member_devices(objects.method_settings["num_members"], objects.method_settings["member_devices"])
        except ValueError as e:
            raise ValueError(f"{eff.source}: inference.ensemble.{e}") from None
    if plan is not None and evaluate_held_out and plan.num_support != eff.tasks.num_support:
        notes.append(f"the tasks of tasks.store have {plan.num_support} support points; the held-out tasks, drawn "
                     f"from the family, have tasks.num_support = {eff.tasks.num_support}")
    main = is_main_process()  # in a distributed run every process computes; process 0 alone writes and prints
    final_path = new_run_path(cfg.model.name, out=out, runs_dir=runs_dir) if main else str(out or runs_dir)
    stages = _Stages(5 if evaluate_held_out else 4, eff.run.progress and main, stream)
    for note in notes if stages.enabled else ():
        print(f"hbmeta: note: {note}", file=stages.stream, flush=True)
    writer = RunWriter(final_path, resume=resume) if main else ScratchWriter(final_path)
    try:
        writer.write_text("config.toml", cfg.to_toml())  # first: an interrupted run can be resumed from it
        stages.start("tasks", "drawing tasks" if train_tasks is None and data is None and plan is None else
                     "checking the training tasks" if plan is None else
                     f"training tasks of the store: {plan.describe}{'; drawing held-out tasks' if evaluate_held_out else ''}")
        fit_tasks = None  # what MAML and the method train on, when not ``train`` itself (a store read lazily)
        if plan is not None:
            train, fit_tasks = store_tasks(plan, keys["train"])
        elif data is not None:
            train = data.train.tasks
        else:
            train = _build.draw_tasks(objects.train_family, keys["train"], eff.tasks.num_train)[0] \
                if train_tasks is None else train_tasks
        fit_tasks = train if fit_tasks is None else fit_tasks
        test, test_params = None, None
        if evaluate_held_out and data is not None:
            test = data.test.tasks
        elif evaluate_held_out:
            test, test_params = _build.draw_tasks(objects.heldout_family, keys["test"], eff.tasks.num_test)

        theta0 = _build.initial_params(eff, objects.network, keys["init"],
                                       input_dim=None if data is None else data.input_dim)
        if evaluate_held_out:  # the predictive's memory, checked now rather than after the fit
            _check_predictive_memory(method, objects.method_settings, test, theta0, objects.network,
                                     compare=eff.evaluation.compare_maml)

        stages.start("maml", f"meta-training MAML ({eff.maml.num_iterations} iterations, "
                             f"meta-batch {min(eff.maml.meta_batch_size, num_train)} of {num_train} tasks)")
        maml = train_maml(
            theta0, fit_tasks, rule=objects.rule, key=keys["maml"],
            num_iterations=eff.maml.num_iterations, optimizer=objects.maml_optimizer,
            meta_batch_size=min(eff.maml.meta_batch_size, num_train),
            learn_step_size=eff.maml.learn_step_size, progress=eff.run.progress and main, devices=devices,
            chunk_size=min(1000, eff.run.checkpoint_every or 1000),
            checkpoint=Checkpointer(writer.checkpoint_path("maml"), every_steps=eff.run.checkpoint_every)
            if eff.run.checkpoint_every else None,
        )
        alpha = float(np.asarray(maml.step_size)) if eff.maml.learn_step_size else None
        spec = _build.spec(eff, objects.network, maml.params, step_size=alpha, rule_=objects.rule)
        # MAML's point estimate, scored beside the method: φ̂_j a point, σ its RMS residual (no task posterior)
        maml_post = maml_posterior(replace(spec, task_posterior=None), maml.params, train)

        members = eff.inference.nuts.members if method in ("nuts", "hmc") else 0
        start = ("each member from its own random initialisation" if method == "ensemble" else
                 f"from the members of an ensemble of {members}" if members else
                 "from MAML θ" if eff.inference.init == "maml" else "from the default start")
        with_tp = "" if spec.task_posterior is None else f", task-level posteriors ({eff.task_posterior.kind})"
        stages.start("posterior", f"fitting the posterior over θ ({method}{with_tp}, {spec.num_params} "
                                  f"parameters, {start})")
        if method == "maml":
            post = maml_post
        else:
            init = maml_post if eff.inference.init == "maml" else None  # θ and σ (RMS residual) of MAML
            if init is not None and spec.task_posterior is not None and method != "ensemble":
                # start τ and σ at their type-II maximum-likelihood values at MAML's θ (on the training tasks:
                # only a starting point, the method then fits them)
                fitted = fit_task_hyperparameters(spec, maml.params, train,
                                                  noise=spec.likelihood.noise if eff.regression else None)
                init = maml_posterior(spec, maml.params, train, tau=fitted.tau,
                                      noise=fitted.noise if spec.likelihood.noise is None and eff.regression else None)
            settings = dict(objects.method_settings)
            if members:  # the chains start at the members of an ensemble trained first (run.chain_starts)
                init = member_starts(eff, objects, spec, fit_tasks, key=jax.random.fold_in(keys["infer"], 1),
                                     input_dim=None if data is None else data.input_dim,
                                     progress=eff.run.progress and main,
                                     checkpoint_path=writer.checkpoint_path("members"))
            if method == "ensemble":  # members start from their own random initialisations, not MAML's θ
                input_dim = None if data is None else data.input_dim
                init = lambda k: _build.initial_params(eff, objects.network, k, input_dim=input_dim)
                settings["meta_batch_size"] = min(settings["meta_batch_size"], ensemble_train_size(
                    train.num_tasks, settings["num_members"], settings["holdout"]))
            if method in ("svi", "svgd", "laplace", "ensemble") and eff.run.checkpoint_every:  # like MAML's
                settings["chunk_size"] = min(500 if method in ("svgd", "laplace") else 1000, eff.run.checkpoint_every)
                settings["checkpoint"] = Checkpointer(writer.checkpoint_path(method),
                                                      every_steps=eff.run.checkpoint_every)
            if method in ("nuts", "hmc") and eff.run.checkpoint_every:  # the chains' state after every chunk
                transitions = settings["num_warmup"] + settings["num_samples"]
                settings["chunk_size"] = min(default_chunk_size(transitions), eff.run.checkpoint_every)
                settings["checkpoint"] = Checkpointer(writer.checkpoint_path(method))
            post = infer(spec, fit_tasks, method=method, key=keys["infer"], init=init,
                         progress=eff.run.progress and main, devices=devices, **settings)
            for reason in ("chain_method_reason", "member_devices_reason"):  # how chains or members used the devices
                if reason in post.info and stages.enabled and (reason != "member_devices_reason" or
                                                               post.settings.get("member_devices", 1) > 1):
                    print(f"hbmeta: note: {post.info[reason]}", file=stages.stream, flush=True)
            skipped = int(post.info.get("skipped_steps", 0))
            if skipped and stages.enabled:
                print(f"hbmeta: note: SVI skipped {skipped} of {len(post.info['losses'])} steps whose loss or "
                      "gradient was not finite (many: lower inference.svi.learning_rate)", file=stages.stream,
                      flush=True)

        metrics = {
            "model": cfg.model.name, "method": method, "task_posterior": eff.task_posterior.kind,
            "seed": eff.run.seed, "toy": eff.run.toy,
            "num_parameters": spec.num_params, "num_train_tasks": num_train,
            "maml_final_loss": float(np.mean(maml.losses[-max(1, len(maml.losses) // 20):])),
        }
        if plan is not None:
            metrics["tasks_store"] = {"path": store.directory, "num_tasks": store.num_tasks, "loaded": not plan.lazy,
                                      "summary_tasks": train.num_tasks, "describe": plan.describe}
        if "skipped_steps" in post.info:
            metrics["skipped_steps"] = int(post.info["skipped_steps"])
        fold = post.info.get("holdout_noise") if method == "ensemble" else None
        if fold is not None and "tau" in fold:  # the task-level fit on the folds
            metrics["holdout_fit"] = task_scale_json(fold)
        predictives = {}
        if evaluate_held_out:
            stages.start("evaluate", f"sampling adapted models on {test.num_tasks} held-out tasks")
            predictives[method] = sample_predictive(post, test, key=keys["predict"], devices=devices)
            if eff.evaluation.compare_maml and method != "maml":
                predictives["maml"] = sample_predictive(maml_post, test, key=keys["predict_maml"], devices=devices)
            held = {name: _held_out_metrics(pred, test, keys["predict"]) for name, pred in predictives.items()}
            if data is not None:  # standardised targets: report the metrics in the target's original units
                held = {m: data.scaler.metrics_to_original(v) for m, v in held.items()}
            metrics["held_out"] = held
            check = check_step_size(maml.params, test, rule=spec.rule, key=keys["predict"])
            metrics["step_size_check"] = {"max_alpha_lambda": _finite(np.nanmax(check.scaled_curvature)),
                                          "unstable_tasks": int(len(check.unstable)),
                                          "max_stable_step_size": _finite(check.max_stable_step_size),
                                          "message": check.message}
            metrics["maml_finetune"] = _finetune(maml.params, test, spec.rule, eff.evaluation.finetune_steps)
            for note in (check.message, metrics["maml_finetune"]["message"]):
                if note and eff.run.progress:
                    print(f"hbmeta: note: {note}", file=stages.stream, flush=True)

        if data is not None:
            metrics["data"] = data_metrics(data)
        stages.start("write", "diagnostics, pictures and files")
        # the exact posterior is that of every training task: not with a subset of a store
        exact = exact_comparison(objects, spec, post, train) if train.num_tasks == num_train else None
        if exact is not None:
            metrics["exact_posterior"] = exact
        diagnosis = _write_run(writer, cfg, eff, objects, post, maml, maml_post, train, test, test_params,
                               predictives, metrics, devices=devices)
        if data is not None:
            writer.write_json("standardization.json", data.scaler.to_dict())
            if test is not None:
                shown = {method: post, **({"maml": maml_post} if "maml" in predictives and method != "maml" else {})}
                write_group_pictures(writer, eff, data, shown, key=keys["predict"])
        stages.stop()
        metrics["timings_s"] = stages.timings
        writer.write_json("metrics.json", metrics)
        writer.write_text("summary.txt", summary_text(cfg, eff, metrics, diagnosis, writer.files, final_path))
        settings = getattr(post, "settings", {})
        path = writer.commit({"hbmeta_run": 1, "model": cfg.model.name, "method": method,
                              "num_parameters": spec.num_params, "settings": settings, "created": time.strftime("%Y-%m-%d %H:%M:%S")})
    except BaseException as e:
        writer.discard(keep_checkpoints=isinstance(e, KeyboardInterrupt))  # Ctrl-C: `hbmeta run --resume` continues
        raise
    if main:
        print(final_table(metrics, path, [f for f in writer.files]), file=sys.stdout if stream is None else stream)
    return RunResult(path, metrics, cfg, post, maml.params)


def _write_run(writer, cfg, eff, objects, post, maml, maml_post, train, test, test_params, predictives, metrics, *,
               devices=None):
    """Every file of the run but metrics.json, summary.txt and the marker; returns the diagnosis text."""
    keys = objects.keys
    writer.write_text("config.toml", cfg.to_toml())
    save_params(writer.path("meta_params.npz"), maml.params, model=cfg.model.name,
                step_size=float(np.asarray(maml.step_size)) if eff.maml.learn_step_size else None,
                final_loss=metrics["maml_final_loss"])
    writer.write_arrays("posterior.npz", **{k: v for k, v in post.samples.items() if k != "phi"})
    writer.write_arrays("maml_losses.npz", losses=maml.losses)
    reference = _reference(test if test is not None else train)
    k1, k2 = jax.random.split(keys["arviz"])
    # written block by block: the predictive and the per-task log-likelihood are never held whole (the
    # held-out predictive, already in memory for the metrics, is read block by block, not copied)
    idata = to_netcdf(post, train, writer.path("posterior.nc"), reference=reference, key=k1, devices=devices)
    if test is not None:
        to_netcdf(post, test, writer.path("heldout.nc"), predictive=predictives[objects.method], key=k2)
    if post.num_chains * post.num_draws >= 2:
        diagnosis = diagnose(idata, warn=False)
        metrics["diagnostics"] = diagnosis.record()  # R-hat and ESS where they apply (Markov chains; within modes)
        text = diagnosis.text
    else:
        text = f"hbmeta diagnosis: method {post.method}, a single draw: nothing to diagnose."
        metrics["diagnostics"] = {"divergences": 0, "warnings": [], "max_rhat": None, "min_ess_bulk": None}
    write_pictures(writer, eff, objects, post, idata, predictives, test, test_params, maml_post=maml_post)
    return text


def run_devices(count: int):
    """``devices=`` for the library from ``run.devices``: 1 → None (one device), 0 → every device, n → n."""
    if count == 1:
        return None
    return jax.device_count() if count == 0 else count


def _held_out_metrics(predictive, tasks, key) -> dict:
    """The metrics of one predictive on the held-out tasks, with regression's coverage per third of the tasks.

    ``key`` draws the labels of classification's ECE floor.
    """
    out = predictive_metrics(None, tasks, key=key, predictive=predictive)
    if predictive.regression:
        out.update(coverage_by_spread(predictive, tasks, level=0.9))
    return out


def _check_train_tasks(cfg: Config, tasks) -> None:
    """The user's training tasks must fit the configured network and likelihood (checked before any work)."""
    check_type("train_tasks", tasks, TaskBatch, hint=" (see hbmeta.make_tasks)")
    d = cfg.family.input_dim
    if tasks.x_support.shape[-1] != d:
        raise ValueError(f"train_tasks have {tasks.x_support.shape[-1]} input features; expected {d}, "
                         f"the input size of the configured network (family {cfg.family.name!r})")
    if cfg.regression:
        if tasks.y_support.ndim != 3 or tasks.y_support.shape[-1] != 1:
            raise ValueError(f"train_tasks have targets of shape {tasks.y_support.shape}; expected (tasks, points, 1) "
                             "real values for the normal likelihood")
    else:
        k = cfg.family.output_dim
        labels = np.concatenate([np.asarray(tasks.y_support).ravel(), np.asarray(tasks.y_query).ravel()])
        if tasks.y_support.ndim != 2 or labels.min() < 0 or labels.max() >= k:
            raise ValueError(f"train_tasks have targets of shape {tasks.y_support.shape} with values "
                             f"{labels.min()}..{labels.max()}; expected (tasks, points) class labels 0..{k - 1}")


def _finetune(params, tasks, rule, num_steps) -> dict:
    """MAML's fine-tuning curve on held-out tasks (:func:`~hbmeta.evaluate`) as metrics.json stores it.

    Tasks whose loss is not finite, or above 1e6 (fine-tuning diverged), are
    counted in ``diverged`` and left out of the mean.
    """
    ev = evaluate(params, tasks, rule=rule, num_steps=num_steps, diverged_above=1e6)
    finite = [None if not np.isfinite(v) else float(v) for v in ev.mean]
    ci = [None if not np.isfinite(c) or n < 2 else float(c)
          for c, n in zip(ev.ci95, tasks.num_tasks - ev.diverged)]
    return {"steps": ev.steps.tolist(), "loss": finite, "ci95": ci, "diverged": ev.diverged.astype(int).tolist(),
            "first_diverged": None if ev.first_diverged is None else list(ev.first_diverged),
            "message": divergence_message(ev)}


def _reference(tasks, num_tasks=4, num_points=5):
    """A few tasks and query points whose predictions are the invariant functionals of the diagnostics."""
    t = tasks.take(np.arange(min(num_tasks, tasks.num_tasks)))
    m = slice(0, min(num_points, t.x_query.shape[1]))
    return t._replace(x_query=t.x_query[:, m], y_query=t.y_query[:, m],
                      query_mask=None if t.query_mask is None else t.query_mask[:, m])


def _finite(x):
    x = float(x)
    return x if np.isfinite(x) else None
