"""hbmeta: probabilistic, hierarchical-Bayes meta-learning on JAX and NumPyro.

MAML's gradient-step estimator φ̂ = θ − α∇L(θ) inside a hierarchical model,
with a prior on θ and its posterior sampled (NUTS) or approximated (SVI,
Laplace, SVGD); adapted models sampled for new tasks give calibrated
uncertainty.
"""

from hbmeta._adapt import GradientSteps, adapt
from hbmeta._evaluate import Evaluation, evaluate, finetune_losses
from hbmeta._families import FixedTasks, GaussianBlobs, LinearGaussian, Sinusoid, SinusoidAndLine
from hbmeta._io import load_params, save_params
from hbmeta._losses import mse, softmax_cross_entropy
from hbmeta._maml import MAMLInfo, MAMLResult, MAMLState, init_maml, maml_update, meta_loss, train_maml
from hbmeta._nets import Network, linear, mlp
from hbmeta._sharding import shard_tasks, task_mesh
from hbmeta._tasks import TaskBatch, concatenate_tasks, make_tasks

__version__ = "0.1.0"

__all__ = [
    "Evaluation",
    "FixedTasks",
    "GaussianBlobs",
    "GradientSteps",
    "LinearGaussian",
    "MAMLInfo",
    "MAMLResult",
    "MAMLState",
    "Network",
    "Sinusoid",
    "SinusoidAndLine",
    "TaskBatch",
    "adapt",
    "concatenate_tasks",
    "evaluate",
    "finetune_losses",
    "init_maml",
    "linear",
    "load_params",
    "maml_update",
    "meta_loss",
    "mlp",
    "mse",
    "save_params",
    "shard_tasks",
    "softmax_cross_entropy",
    "task_mesh",
    "train_maml",
]

from hbmeta._posterior import Posterior  # noqa: E402
from hbmeta._spec import (  # noqa: E402
    CategoricalLikelihood,
    ModelSpec,
    NormalLikelihood,
    NormalPrior,
    StepSizePrior,
)

__all__ += ["CategoricalLikelihood", "ModelSpec", "NormalLikelihood", "NormalPrior", "Posterior", "StepSizePrior"]

# --- inference (helper B): add imports and __all__ entries below this line ---
from hbmeta._infer import infer, maml_posterior  # noqa: E402
from hbmeta._infer_laplace import run_laplace  # noqa: E402
from hbmeta._infer_nuts import run_nuts  # noqa: E402
from hbmeta._infer_svgd import run_svgd  # noqa: E402
from hbmeta._infer_svi import run_svi  # noqa: E402
from hbmeta._model import build_model  # noqa: E402

__all__ += ["build_model", "infer", "maml_posterior", "run_laplace", "run_nuts", "run_svgd", "run_svi"]

# --- predictive, metrics, ArviZ (helper C): add imports and __all__ entries below this line ---
from hbmeta import plots  # noqa: E402
from hbmeta._arviz import Diagnosis, diagnose, diagnostic_draws, load_netcdf, loo, save_netcdf, to_arviz  # noqa: E402
from hbmeta._metrics import (  # noqa: E402
    accuracy,
    brier_score,
    calibration_curve,
    calibration_error,
    categorical_nll,
    coverage,
    expected_calibration_error,
    mixture_cdf,
    mixture_nll,
    predictive_metrics,
    predictive_mse,
    reliability_curve,
)
from hbmeta._predict import Predictive, PredictiveSummary, sample_predictive, summarize, with_query_inputs  # noqa: E402

__all__ += [
    "Diagnosis",
    "Predictive",
    "PredictiveSummary",
    "accuracy",
    "brier_score",
    "calibration_curve",
    "calibration_error",
    "categorical_nll",
    "coverage",
    "diagnose",
    "diagnostic_draws",
    "expected_calibration_error",
    "load_netcdf",
    "loo",
    "mixture_cdf",
    "mixture_nll",
    "plots",
    "predictive_metrics",
    "predictive_mse",
    "reliability_curve",
    "sample_predictive",
    "save_netcdf",
    "summarize",
    "to_arviz",
    "with_query_inputs",
]

# --- configuration, the main job, exact reference (helper D): add imports and __all__ entries below this line ---
from hbmeta._config import Config, load_config  # noqa: E402
from hbmeta._exact import GaussianPosterior, gaussian_distance, linear_gaussian_posterior  # noqa: E402
from hbmeta._run import RunResult, run_pipeline  # noqa: E402
from hbmeta._rundir import LoadedRun, load_run  # noqa: E402

__all__ += [
    "Config",
    "GaussianPosterior",
    "LoadedRun",
    "RunResult",
    "gaussian_distance",
    "linear_gaussian_posterior",
    "load_config",
    "load_run",
    "run_pipeline",
]
