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

# --- predictive, metrics, ArviZ (helper C): add imports and __all__ entries below this line ---
