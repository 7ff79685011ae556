"""What a run reports: the exact-posterior check, pictures, the final table, summary.txt and the ensemble's fit in metrics.json."""

from __future__ import annotations

import math
import os

import jax
import numpy as np

from hbmeta.inference.registry import METHODS
from hbmeta.model.exact import gaussian_distance, linear_gaussian_posterior
from hbmeta.model.support_distance import distance_midpoints
from hbmeta.plots import plot_calibration, plot_predictive_band, plot_rank, plot_reliability, plot_trace
from hbmeta.run.config import Config

_ORDER = ("mse", "nll", "calibration_error", "calibration_error_noise", "coverage_50", "coverage_90", "coverage_95",
          "coverage_90_low_spread", "coverage_90_mid_spread", "coverage_90_high_spread",
          "accuracy", "brier", "ece", "ece_floor")


def exact_comparison(objects, spec, post, train) -> dict | None:
    """For the linear model with fixed noise: the distance of the fitted posterior to the exact one.

    Returns None when the model is not the closed-form case (an MLP, inferred
    noise or step size, or the explicit variant).
    """
    lik = spec.likelihood
    if not objects.linear or not lik.regression or lik.noise is None:
        return None
    if spec.step_size_prior is not None or spec.explicit_tau is not None:
        return None
    loc, scale = (np.asarray(a, dtype=np.float64) for a in spec.prior_loc_scale())
    exact = linear_gaussian_posterior(train, step_size=float(spec.rule.step_size), noise=float(lik.noise),
                                      num_steps=spec.rule.num_steps, prior_loc=loc, prior_scale=scale)
    draws = post.flat("theta")
    out = {"exact_mean": exact.mean.tolist(), "exact_sd": exact.sd.tolist()}
    if draws.shape[0] >= 2:
        out.update(gaussian_distance(draws, exact))
    else:
        out["max_mean_diff_sd"] = float(np.max(np.abs(draws[0] - exact.mean) / exact.sd))
        out["num_draws"] = 1
    return out


def write_pictures(writer, eff: Config, objects, post, idata, predictives: dict, test, test_params,
                   maml_post=None) -> None:
    """The PNG pictures of a run (those that apply to its model and method)."""
    method, keys = objects.method, objects.keys
    if post.num_draws * post.num_chains >= 2:
        plot_trace(idata, writer.path("trace.png"))
    if METHODS[method].kind == "mcmc" and post.num_draws >= 4:
        plot_rank(idata, writer.path("rank.png"))
    if test is None or not predictives:
        return
    if eff.regression:
        plot_calibration(predictives, test, writer.path("calibration.png"),
                         title=f"calibration on {test.num_tasks} held-out tasks")
    else:
        plot_reliability(predictives[method], test, writer.path("reliability.png"),
                         title=f"reliability on {test.num_tasks} held-out tasks ({method})")
    fam = objects.heldout_family
    if eff.regression and test.x_support.shape[-1] == 1 and hasattr(fam, "x_range"):
        lo, hi = fam.x_range
        grid = np.linspace(lo, hi, 200)

        def truth(j, x):
            p = jax.tree.map(lambda a: a[j], test_params)
            return np.asarray(fam.function(p, np.asarray(x)[:, None]))

        plot_predictive_band(post, test, writer.path("predictive.png"), x=grid, key=keys["predict"], truth=truth,
                             num_tasks=eff.evaluation.num_plot_tasks,
                             title=f"{eff.model.name}: posterior predictive ({method}"
                                   + ("" if eff.task_posterior.kind == "off" else " and task-level posteriors")
                                   + ") on held-out tasks")
        if maml_post is not None and "maml" in predictives and method != "maml":
            plot_predictive_band(maml_post, test, writer.path("predictive_maml.png"), x=grid, key=keys["predict"],
                                 truth=truth, num_tasks=eff.evaluation.num_plot_tasks,
                                 title=f"{eff.model.name}: MAML point estimate on the same tasks")


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.3e}"
    return str(v)


def metrics_table(metrics: dict) -> list[str]:
    """Lines of the held-out metrics table (one column per method)."""
    held = metrics.get("held_out")
    if not held:
        return []
    cols = list(held)
    names = [n for n in _ORDER if any(n in held[c] for c in cols)]
    lines = [f"  {'held-out metric':<24}" + "".join(f"{c:>12}" for c in cols)]
    for n in names:
        lines.append(f"  {n:<24}" + "".join(f"{_fmt(held[c].get(n)):>12}" for c in cols))
    return lines


def _diagnostic_line(metrics: dict) -> str | None:
    d = metrics.get("diagnostics")
    if not d:
        return None
    parts = [f"{d['divergences']} divergences"]
    within = " within modes" if d.get("scope") == "within modes" else ""
    if within:
        parts.append(f"{d['num_modes']} modes")
    if d.get("max_rhat") is not None:
        parts.append(f"max R-hat{within} {d['max_rhat']:.3f}")
    if d.get("min_ess_bulk") is not None:
        parts.append(f"min bulk ESS{' per mode' if within else ''} {d['min_ess_bulk']:.0f}")
    if d.get("min_ess_mixture") is not None:
        parts.append(f"min stratified ESS of the mixture {d['min_ess_mixture']:.0f}")
    n = len(d.get("warnings", []))
    parts.append(f"{n} warning{'s' if n != 1 else ''}" + (" (see summary.txt)" if n else ""))
    return "diagnostics (invariant functionals): " + ", ".join(parts)


def _exact_line(metrics: dict) -> str | None:
    e = metrics.get("exact_posterior")
    if not e:
        return None
    line = f"fitted vs exact posterior over θ: max |mean diff|/sd = {e['max_mean_diff_sd']:.3f}"
    if "sd_ratio_min" in e:
        line += f", sd ratio (fitted/exact) {e['sd_ratio_min']:.3f} to {e['sd_ratio_max']:.3f}"
    return line + f" ({e['num_draws']} draws)"


def final_table(metrics: dict, path: str, files) -> str:
    """The short report printed at the end of a run."""
    tp = metrics.get("task_posterior", "off")
    how = metrics["method"] + ("" if tp == "off" else f" and task-level posteriors ({tp})")
    lines = [f"hbmeta: {metrics['model']} with {how}: {metrics['num_parameters']} parameters, "
             f"{metrics['num_train_tasks']} training tasks" + (" (toy size)" if metrics.get("toy") else "")]
    lines += metrics_table(metrics)
    ft = metrics.get("maml_finetune")
    if ft and len(ft["loss"]) > 1:
        steps = [s for s in (1, 5, 10) if s < len(ft["loss"])]
        line = ("  MAML fine-tuning query loss after " + "/".join(map(str, steps)) + f" step{'s' if len(steps) > 1 else ''}: "
                + " / ".join(_fmt(ft["loss"][s]) for s in steps))
        if ft["diverged"][steps[-1]]:
            line += f" ({ft['diverged'][steps[-1]]} tasks diverged, left out)"
        lines.append(line)
    for extra in (_diagnostic_line(metrics), _exact_line(metrics)):
        if extra:
            lines.append("  " + extra)
    total = sum(metrics.get("timings_s", {}).values())
    shown = os.path.relpath(path)
    shown = path if shown.startswith("..") else shown
    lines.append(f"  time {total:.0f} s; files in {shown}/:")
    lines.append("    " + " ".join(sorted(files)))
    return "\n".join(lines)


def summary_text(cfg: Config, eff: Config, metrics: dict, diagnosis: str, files, path) -> str:
    """The plain-text summary written to summary.txt."""
    settings = eff.method_settings()
    lines = [
        f"hbmeta run of model {cfg.model.name!r}: {cfg.model.description}",
        f"configuration: {cfg.source} (resolved copy: config.toml)",
        f"family {eff.family.name}: {eff.tasks.num_train} training tasks, {eff.tasks.num_test} held-out tasks, "
        f"{eff.tasks.num_support} support and {eff.tasks.num_query} query points "
        f"({eff.tasks.num_test_query} on held-out tasks)",
        f"network {eff.network.kind} {list(eff.network.hidden)}, {metrics['num_parameters']} parameters; "
        f"adaptation {eff.adaptation.num_steps} step(s) of α = {eff.adaptation.step_size}",
        f"MAML: {eff.maml.num_iterations} meta-iterations, final meta-loss {metrics['maml_final_loss']:.4f}",
        f"inference: {eff.inference.method}"
        + (" (" + ", ".join(f"{f}={getattr(settings, f)}" for f in settings.__dataclass_fields__) + ")"
           if settings is not None else ""),
    ]
    store = metrics.get("tasks_store")
    if store:  # the line after the family's: where the training tasks came from
        lines.insert(3, f"training tasks: tasks.store {store['path']}: {store['describe']}"
                        + ("" if store["summary_tasks"] == metrics["num_train_tasks"] else
                           f"; posterior.nc and MAML's σ on {store['summary_tasks']} of them (seeded)"))
    fold = metrics.get("holdout_fit")
    if fold and fold.get("noise") is None:  # classification: τ_m and one c for the mixture
        lines.append(f"  τ fitted on held-out folds of the training tasks: each member's τ_m² × c with c = "
                     f"{_fmt(fold['scale'])}"
                     + _class_rule(fold)
                     + f", giving τ_m {_fmt(min(fold['tau']))}..{_fmt(max(fold['tau']))}")
    elif fold:  # the ensemble's σ, τ and tails, fitted on the tasks each member left out
        rule = (" (by the folds' likelihood: the members' spread exceeds the error of their mean)"
                if fold.get("scale_rule") == "folds' likelihood" else "")
        line = (f"  σ and τ fitted on held-out folds of the training tasks: mixture scale c = {_fmt(fold['scale'])}"
                f"{rule}, σ_m {_fmt(min(fold['noise']))}..{_fmt(max(fold['noise']))}, "
                f"τ_m {_fmt(min(fold['tau']))}..{_fmt(max(fold['tau']))}")
        if fold.get("share_scores") and len(fold["share_scores"]) > 1:
            line += f"; noise share s = {_fmt(fold['noise_share'])} (σ_m² × s against τ_m, chosen on the folds)"
        if fold.get("spread_power"):
            line += (f"; per-task scale: (τ², σ²) × ((s²/s̄² + 0.1)/1.1)^p with s² the support targets' spread, "
                     f"p = {_fmt(fold['spread_power'])} (chosen on the folds)")
        edges, scales = list(fold.get("distance_edges") or ()), list(fold.get("distance_scales") or (1.0,))
        if len(scales) > 1 or float(scales[0]) != 1.0:
            if edges:
                mids = np.asarray(distance_midpoints(np.asarray(edges, np.float64)))
                at = ", ".join(f"{_fmt(float(c))} at d = {_fmt(float(m))}" for c, m in zip(scales, mids))
                line += ("; per-point scale by distance d to the nearest support point: variance × c(d), linear in d "
                         f"through {at} and constant beyond (one c for each of {len(scales)} quantile bins of d, "
                         "by the second-moment rule in the bin on the folds, taken at the bin's midpoint)")
            else:
                line += f"; per-point scale: variance × {_fmt(float(scales[0]))} at every distance from the support"
        if fold.get("tail_dof") is not None:
            line += f"; tails: Student-t ν = {_fmt(fold['tail_dof'])} (chosen on the folds)"
        elif fold.get("tail_scores"):
            line += "; tails: Gaussian (chosen on the folds)"
        lines.append(line)
    if "data" in metrics:  # a [data] table: its groups replace the family's tasks
        d, info = eff.data, metrics["data"]
        lines[2] = (f"table {d.path}: {info['train']['num_tasks']} training groups"
                    + (f", {info['test']['num_tasks']} held-out groups" if "test" in info else "")
                    + f" (column {d.task!r}), x = {list(d.x)}, y = {d.y!r}, split {d.split!r} with K = {d.num_support}; "
                    "held-out metrics in the target's original units")
    if eff.run.toy:
        lines.append("toy size: every size capped (run.toy = true); the numbers are not meaningful")
    lines.append("")
    lines += metrics_table(metrics)
    ft = metrics.get("maml_finetune")
    if ft:
        lines.append("")
        lines.append("MAML fine-tuning on held-out tasks (query loss ± 95% CI after n steps):")
        for s, m, c, n in zip(ft["steps"], ft["loss"], ft["ci95"], ft["diverged"]):
            lines.append(f"  {s:3d}: {_fmt(m)} ± {_fmt(c)}" + (f"  ({n} tasks diverged, left out)" if n else ""))
    exact = _exact_line(metrics)
    if exact:
        lines += ["", exact]
    lines += ["", diagnosis, "", "timings (s): " + ", ".join(f"{k} {v}" for k, v in metrics["timings_s"].items())]
    lines += ["", f"files in {path}:"] + [f"  {f}" for f in sorted(set(files) | {"run.json", "summary.txt"})]
    return "\n".join(lines) + "\n"


def _class_rule(fold) -> str:
    """How the classification ensemble's c was chosen, in words (``metrics.json``'s ``holdout_fit``)."""
    rule, gaps = fold.get("scale_rule"), fold.get("reliability_gaps") or {}
    if rule == "mixture Brier":
        return " (the lowest Brier score of the mixture estimated on the folds)"
    if rule == "mixture reliability":
        brier = max(fold["scale_scores"], key=fold["scale_scores"].get)
        gap, se = gaps.get(brier, gaps.get(str(brier), (float("nan"), float("nan"))))
        return (f" (where the mixture's reliability gap estimated on the folds is nearest zero: at c = {_fmt(float(brier))},"
                f" which had the lowest Brier score, the mixture was {'under' if gap > 0 else 'over'}-confident by"
                f" {abs(gap):.3f} ± {se:.3f})")
    return ""


def task_scale_json(fit: dict) -> dict:
    """A :class:`~hbmeta.inference.holdout.TaskScale` as a dict (``fit._asdict()``) in JSON types: ``metrics.json``'s ``holdout_fit``.

    ν = ∞ becomes None (``tail_dof``) or ``"inf"`` (a key of ``tail_scores``).
    """
    dof = fit.get("tail_dof", math.inf)
    return {
        "scale": float(fit["scale"]), "scale_rule": fit.get("scale_rule", "second moment"),
        "tau": [float(t) for t in fit["tau"]],
        "noise": None if fit.get("noise") is None else [float(t) for t in fit["noise"]],
        "tail_dof": None if math.isinf(dof) else float(dof),
        "noise_share": float(fit.get("noise_share", 1.0)),
        "share_scores": None if not fit.get("share_scores") else
        {str(k): float(v) for k, v in fit["share_scores"].items()},
        "tail_scores": None if not fit.get("tail_scores") else
        {("inf" if math.isinf(k) else str(k)): float(v) for k, v in fit["tail_scores"].items()},
        "spread_power": float(fit.get("spread_power", 0.0)),
        "spread_ref": float(fit.get("spread_ref", 1.0)),
        "spread_scores": None if not fit.get("spread_scores") else
        {str(k): float(v) for k, v in fit["spread_scores"].items()},
        "scale_scores": None if not fit.get("scale_scores") else
        {str(k): float(v) for k, v in fit["scale_scores"].items()},
        "reliability_gaps": None if not fit.get("reliability_gaps") else
        {str(k): [float(g), float(e)] for k, (g, e) in fit["reliability_gaps"].items()},
        "distance_edges": [float(e) for e in fit.get("distance_edges", ())],
        "distance_scales": [float(c) for c in fit.get("distance_scales", (1.0,))],
    }
