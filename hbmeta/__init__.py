"""hbmeta: probabilistic, hierarchical-Bayes meta-learning on JAX and NumPyro.

MAML's gradient-step estimator φ̂ = θ − α∇L(θ) inside a hierarchical model,
with a prior on θ and its posterior sampled (NUTS) or approximated (SVI,
Laplace, SVGD, an ensemble); adapted models sampled for new tasks give
calibrated uncertainty.

The package is laid out by stage, each stage importing only those below it:
``base`` → ``tasks`` → ``adaptation`` → ``maml`` / ``model`` → ``inference`` →
``predict`` → ``diagnostics`` → ``plots`` → ``run`` → ``cli``.
Every public name is importable from ``hbmeta`` itself.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Each public name and the module that defines it. The module is imported when the name is first used
# (PEP 562), so that ``import hbmeta`` (which every ``hbmeta`` command line call runs first) does not pay
# for JAX, NumPyro, ArviZ and matplotlib; ``hbmeta --help`` stays instant. Unknown names raise
# AttributeError as usual.
_EXPORTS = {
    "BadFileError": "hbmeta.base.files",
    "CategoricalLikelihood": "hbmeta.model.spec",
    "Config": "hbmeta.run.config",
    "Diagnosis": "hbmeta.diagnostics.diagnose",
    "Evaluation": "hbmeta.maml.evaluate",
    "FixedTasks": "hbmeta.tasks.families",
    "GaussianBlobs": "hbmeta.tasks.families",
    "GaussianPosterior": "hbmeta.model.exact",
    "GeneratedTasks": "hbmeta.tasks.generated",
    "StoredTasks": "hbmeta.tasks.store",
    "GradientSteps": "hbmeta.adaptation.steps",
    "ImageEpisodes": "hbmeta.tasks.images",
    "LinearGaussian": "hbmeta.tasks.families",
    "LoadedRun": "hbmeta.run.rundir",
    "MAMLInfo": "hbmeta.maml.train",
    "MAMLResult": "hbmeta.maml.train",
    "MAMLState": "hbmeta.maml.train",
    "MemoryLimitError": "hbmeta.base.memory",
    "ModelSpec": "hbmeta.model.spec",
    "Network": "hbmeta.adaptation.networks",
    "NonFiniteError": "hbmeta.adaptation.stability",
    "NormalLikelihood": "hbmeta.model.spec",
    "NormalPrior": "hbmeta.model.spec",
    "Posterior": "hbmeta.model.posterior",
    "Predictive": "hbmeta.predict.predictive",
    "PredictiveSummary": "hbmeta.predict.summary",
    "RunResult": "hbmeta.run.pipeline",
    "Sinusoid": "hbmeta.tasks.families",
    "SinusoidAndLine": "hbmeta.tasks.families",
    "Standardization": "hbmeta.tasks.standardize",
    "StepSizeCheck": "hbmeta.adaptation.stability",
    "StepSizePrior": "hbmeta.model.spec",
    "TableTasks": "hbmeta.tasks.table",
    "TaskBatch": "hbmeta.tasks.batch",
    "TaskHyperparameters": "hbmeta.model.task_posterior",
    "TaskPosterior": "hbmeta.model.spec",
    "TaskPredictive": "hbmeta.model.task_posterior",
    "accuracy": "hbmeta.predict.metrics",
    "adapt": "hbmeta.adaptation.steps",
    "brier_score": "hbmeta.predict.metrics",
    "build_model": "hbmeta.model.hierarchical",
    "calibration_curve": "hbmeta.predict.metrics",
    "calibration_error": "hbmeta.predict.metrics",
    "calibration_error_noise": "hbmeta.predict.metrics",
    "calibration_standard_errors": "hbmeta.predict.metrics",
    "categorical_nll": "hbmeta.predict.metrics",
    "check_step_size": "hbmeta.adaptation.stability",
    "concatenate_tasks": "hbmeta.tasks.batch",
    "conv4": "hbmeta.adaptation.conv",
    "coverage": "hbmeta.predict.metrics",
    "coverage_by_spread": "hbmeta.predict.metrics",
    "diagnose": "hbmeta.diagnostics.diagnose",
    "diagnostic_draws": "hbmeta.diagnostics.diagnose",
    "divergence_message": "hbmeta.maml.evaluate",
    "digits_episodes": "hbmeta.tasks.digits",
    "evaluate": "hbmeta.maml.evaluate",
    "expected_calibration_error": "hbmeta.predict.metrics",
    "expected_calibration_error_floor": "hbmeta.predict.metrics",
    "finetune_losses": "hbmeta.maml.evaluate",
    "fit_task_hyperparameters": "hbmeta.model.task_posterior",
    "gaussian_distance": "hbmeta.model.exact",
    "infer": "hbmeta.inference.dispatch",
    "init_maml": "hbmeta.maml.train",
    "linear": "hbmeta.adaptation.networks",
    "linear_gaussian_posterior": "hbmeta.model.exact",
    "load_config": "hbmeta.run.config",
    "load_example": "hbmeta.tasks.examples",
    "load_netcdf": "hbmeta.diagnostics.netcdf",
    "load_params": "hbmeta.base.files",
    "load_run": "hbmeta.run.rundir",
    "loo": "hbmeta.diagnostics.arviz",
    "make_tasks": "hbmeta.tasks.batch",
    "maml_posterior": "hbmeta.inference.dispatch",
    "maml_update": "hbmeta.maml.train",
    "meta_loss": "hbmeta.maml.train",
    "mixture_cdf": "hbmeta.predict.metrics",
    "mixture_nll": "hbmeta.predict.metrics",
    "mlp": "hbmeta.adaptation.networks",
    "mse": "hbmeta.adaptation.losses",
    "no_pooling": "hbmeta.tasks.pooling",
    "omniglot_episodes": "hbmeta.tasks.images",
    "open_task_store": "hbmeta.tasks.store",
    "partial_pooling": "hbmeta.tasks.pooling",
    "predictive_metrics": "hbmeta.predict.metrics",
    "predictive_mse": "hbmeta.predict.metrics",
    "reliability_curve": "hbmeta.predict.metrics",
    "run_ensemble": "hbmeta.inference.ensemble",
    "run_laplace": "hbmeta.inference.laplace",
    "run_mclmc": "hbmeta.inference.mclmc",
    "run_nuts": "hbmeta.inference.nuts",
    "run_pipeline": "hbmeta.run.pipeline",
    "run_svgd": "hbmeta.inference.svgd",
    "run_svi": "hbmeta.inference.svi",
    "sample_predictive": "hbmeta.predict.predictive",
    "save_netcdf": "hbmeta.diagnostics.netcdf",
    "save_params": "hbmeta.base.files",
    "save_task_store": "hbmeta.tasks.store",
    "shard_tasks": "hbmeta.tasks.sharding",
    "softmax_cross_entropy": "hbmeta.adaptation.losses",
    "split_groups": "hbmeta.tasks.table",
    "summarize": "hbmeta.predict.summary",
    "support_log_marginal": "hbmeta.model.task_posterior",
    "task_log_likelihood": "hbmeta.model.task_posterior",
    "task_mesh": "hbmeta.tasks.sharding",
    "task_predictive": "hbmeta.model.task_posterior",
    "task_predictive_scales": "hbmeta.model.task_scales",
    "tasks_from_table": "hbmeta.tasks.table",
    "to_arviz": "hbmeta.diagnostics.arviz",
    "to_netcdf": "hbmeta.diagnostics.netcdf",
    "train_maml": "hbmeta.maml.train",
    "with_query_inputs": "hbmeta.tasks.batch",
}

__all__ = sorted([*_EXPORTS, "plots"])


def __getattr__(name: str):
    if name == "plots":
        return importlib.import_module("hbmeta.plots")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hbmeta' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
