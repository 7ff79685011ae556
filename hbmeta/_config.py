"""Run configuration: TOML files parsed with ``tomllib`` into validated frozen dataclasses.

A configuration describes one hbmeta run: the task family and its settings,
the task counts, the network, the adaptation rule, the prior and likelihood,
MAML meta-training, the inference method and its settings, the evaluation and
the run itself (seed, toy size). Every key has a default; a model file gives
only what differs. :func:`load_config` reads a ready-made model name or a path,
applies ``section.key=value`` overrides and checks everything: an unknown key,
a wrong type or an out-of-range value raises ``ValueError`` naming the file (or
the override), the key and what is allowed. :meth:`Config.to_toml` writes the
fully resolved configuration (every default written out), which loads back to
an equal configuration.

Example:
    >>> from hbmeta._config import load_config
    >>> cfg = load_config("sinusoid", ["inference.nuts.num_samples=100"])
    >>> cfg.inference.nuts.num_samples, cfg.family.name
    (100, 'sinusoid')
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from importlib import resources

from hbmeta import _toml
from hbmeta._config_fields import FAMILIES, FamilyConfig, check, opt, parse_family

METHODS = ("nuts", "hmc", "svi", "laplace", "svgd", "maml")


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
class MAMLSection:
    num_iterations: int = opt(10000, "int", "meta-iterations of MAML (Algorithm 1)", lo=1)
    meta_batch_size: int = opt(25, "int", "tasks per meta-iteration (at most tasks.num_train)", lo=1)
    learning_rate: float = opt(0.003, "float", "Adam's learning rate for the outer step", lo=0.0, strict=True)
    clip_norm: float = opt(10.0, "float", "clip the meta-gradient's global norm to this; 0 = no clipping", lo=0.0)
    learn_step_size: bool = opt(False, "bool", "meta-learn α too (Meta-SGD style, scalar)")


@dataclass(frozen=True)
class NutsSection:
    num_chains: int = opt(2, "int", "chains", lo=1, hi=64)
    num_warmup: int = opt(200, "int", "warm-up (adaptation) draws per chain", lo=1)
    num_samples: int = opt(200, "int", "kept draws per chain", lo=1)
    max_tree_depth: int = opt(5, "int", "NUTS tree depth cap (≤ 2^depth − 1 leapfrog steps)", lo=1, hi=15)
    target_accept_prob: float = opt(0.8, "float", "step-size adaptation target", lo=0.0, hi=1.0, strict=True)
    dense_mass: bool = opt(False, "bool", "dense mass matrix (slow for large θ)")


@dataclass(frozen=True)
class SVISection:
    guide: str = opt("mean_field", "str", "mean_field | low_rank | full_rank | map",
                     choices=("mean_field", "low_rank", "full_rank", "map"))
    rank: int = opt(0, "int", "rank of the low_rank guide; 0 = automatic", lo=0)
    num_steps: int = opt(3000, "int", "optimisation steps", lo=1)
    num_draws: int = opt(400, "int", "draws from the fitted guide", lo=1)
    learning_rate: float = opt(0.003, "float", "Adam's learning rate", lo=0.0, strict=True)


@dataclass(frozen=True)
class LaplaceSection:
    num_steps: int = opt(500, "int", "MAP optimisation steps", lo=1)
    num_draws: int = opt(400, "int", "draws from the Gaussian at the MAP", lo=1)
    optimizer: str = opt("lbfgs", "str", "lbfgs | adam (for the MAP)", choices=("lbfgs", "adam"))
    learning_rate: float = opt(0.003, "float", "Adam's learning rate (optimizer = adam)", lo=0.0, strict=True)


@dataclass(frozen=True)
class SVGDSection:
    num_particles: int = opt(10, "int", "particles (BMAML used 10)", lo=2)
    num_steps: int = opt(2000, "int", "optimisation steps", lo=1)
    learning_rate: float = opt(0.003, "float", "Adam's learning rate", lo=0.0, strict=True)


@dataclass(frozen=True)
class InferenceSection:
    method: str = opt("nuts", "str", " | ".join(METHODS), choices=METHODS)
    init: str = opt("maml", "str", "maml (start from the MAML θ) | prior (the method's default start)",
                    choices=("maml", "prior"))
    nuts: NutsSection = opt(NutsSection(), "section", "NUTS and HMC settings")
    svi: SVISection = opt(SVISection(), "section", "stochastic variational inference settings")
    laplace: LaplaceSection = opt(LaplaceSection(), "section", "Laplace approximation settings")
    svgd: SVGDSection = opt(SVGDSection(), "section", "Stein variational gradient descent settings")


@dataclass(frozen=True)
class EvaluationSection:
    finetune_steps: int = opt(10, "int", "MAML fine-tuning curve: query loss after 0..n steps", lo=0, hi=100)
    num_plot_tasks: int = opt(4, "int", "held-out tasks drawn in the predictive picture", lo=1, hi=16)
    compare_maml: bool = opt(True, "bool", "also score the MAML point estimate (method maml)")


@dataclass(frozen=True)
class RunSection:
    seed: int = opt(0, "int", "PRNG seed: a seed reproduces the run", lo=0)
    toy: bool = opt(False, "bool", "cap every size to a toy value (a run in seconds; for tests)")
    progress: bool = opt(True, "bool", "print progress of long stages on standard error")


SECTIONS = {
    "model": ModelSection,
    "tasks": TasksSection,
    "network": NetworkSection,
    "adaptation": AdaptationSection,
    "prior": PriorSection,
    "likelihood": LikelihoodSection,
    "maml": MAMLSection,
    "inference": InferenceSection,
    "evaluation": EvaluationSection,
    "run": RunSection,
}

# Toy sizes: with ``run.toy = true`` every size is capped to these (see Config.effective).
TOY_CAPS = {
    # training and held-out batches of the same shape, so that their predictives share one compilation
    "tasks": {"num_train": 8, "num_test": 8, "num_query": 10, "num_test_query": 10},
    "maml": {"num_iterations": 30, "meta_batch_size": 4},
    "inference.nuts": {"num_chains": 2, "num_warmup": 15, "num_samples": 10, "max_tree_depth": 3},
    "inference.svi": {"num_steps": 30, "num_draws": 10},
    "inference.laplace": {"num_steps": 30, "num_draws": 10},
    "inference.svgd": {"num_particles": 4, "num_steps": 30},
    "evaluation": {"finetune_steps": 3, "num_plot_tasks": 2},
}


@dataclass(frozen=True)
class Config:
    """A fully resolved, validated run configuration (see the module docstring)."""

    model: ModelSection
    family: FamilyConfig
    tasks: TasksSection
    network: NetworkSection
    adaptation: AdaptationSection
    prior: PriorSection
    likelihood: LikelihoodSection
    maml: MAMLSection
    inference: InferenceSection
    evaluation: EvaluationSection
    run: RunSection
    source: str = field(default="<defaults>", compare=False)

    @property
    def regression(self) -> bool:
        return self.likelihood.kind == "normal"

    def method_settings(self, method: str | None = None):
        """The settings section of ``method`` (default: the configured one), or None for maml."""
        method = self.inference.method if method is None else method
        name = "nuts" if method == "hmc" else method
        return getattr(self.inference, name, None)

    def effective(self) -> "Config":
        """The configuration that runs: with ``run.toy``, every size capped to :data:`TOY_CAPS`."""
        if not self.run.toy:
            return self
        cfg = self
        for path, caps in TOY_CAPS.items():
            cfg = _replace_path(cfg, path, caps)
        n = cfg.family.points_multiple  # blobs: point counts stay multiples of the number of classes
        counts = {k: max(n, getattr(cfg.tasks, k) // n * n) for k in ("num_support", "num_query", "num_test_query")}
        return replace(cfg, tasks=replace(cfg.tasks, **counts))

    def to_dict(self) -> dict:
        """The nested dict of every key (the TOML structure)."""
        out = {"model": _section_dict(self.model), "family": self.family.to_dict()}
        for name in SECTIONS:
            if name != "model":
                out[name] = _section_dict(getattr(self, name))
        return out

    def to_toml(self) -> str:
        """The resolved configuration as TOML text, every default written out, with comments."""
        comments = {"family": f"task family: {' | '.join(FAMILIES)}; its settings follow"}
        for name, cls in SECTIONS.items():
            _collect_comments(cls, name, comments)
        header = (
            "hbmeta run configuration, fully resolved (every default written out).\n"
            f"Resolved from: {self.source}\n"
            "Reproduce with: hbmeta run THIS_FILE"
        )
        return _toml.dumps(self.to_dict(), comments=comments, header=header)


def _section_dict(obj) -> dict:
    out = {}
    for f in fields(obj):
        v = getattr(obj, f.name)
        out[f.name] = _section_dict(v) if f.metadata.get("kind") == "section" else (list(v) if isinstance(v, tuple) else v)
    return out


def _collect_comments(cls, path, comments):
    for f in fields(cls):
        key = f"{path}.{f.name}"
        comments[key] = f.metadata.get("doc", "")
        if f.metadata.get("kind") == "section":
            _collect_comments(type(f.default), key, comments)


def _replace_path(cfg, path, caps):
    head, *rest = path.split(".")
    sub = getattr(cfg, head)
    if rest:
        return replace(cfg, **{head: _replace_path(sub, ".".join(rest), caps)})
    changes = {k: min(getattr(sub, k), v) for k, v in caps.items()}
    return replace(cfg, **{head: replace(sub, **changes)})


def _parse_section(cls, raw, where, path):
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: {path} is a {type(raw).__name__}; expected a table [{path}]")
    allowed = [f.name for f in fields(cls)]
    for key in raw:
        if key not in allowed:
            raise ValueError(f"{where}: unknown key {path}.{key}; allowed keys in [{path}]: {', '.join(allowed)}")
    kwargs = {}
    for f in fields(cls):
        if f.metadata["kind"] == "section":
            kwargs[f.name] = _parse_section(type(f.default), raw.get(f.name, {}), where, f"{path}.{f.name}")
        elif f.name in raw:
            kwargs[f.name] = check(raw[f.name], f.metadata, where, f"{path}.{f.name}")
    return cls(**kwargs)


def from_dict(raw: dict, *, where: str = "<dict>", cross_check: bool = True) -> Config:
    """Validate a nested dict (as read from TOML) into a :class:`Config`.

    ``cross_check=False`` skips the checks between sections (used between overrides).
    """
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a table of sections, got a {type(raw).__name__}")
    allowed = ["model", "family", *[s for s in SECTIONS if s != "model"]]
    for key in raw:
        if key not in allowed:
            raise ValueError(f"{where}: unknown section [{key}]; allowed sections: {', '.join(allowed)}")
    family = parse_family(raw.get("family", {}), where)
    raw_lik = dict(raw.get("likelihood", {})) if isinstance(raw.get("likelihood", {}), dict) else raw["likelihood"]
    if isinstance(raw_lik, dict) and "kind" not in raw_lik:
        raw_lik["kind"] = "normal" if family.regression else "categorical"
    sections = {}
    for name, cls in SECTIONS.items():
        sections[name] = _parse_section(cls, raw_lik if name == "likelihood" else raw.get(name, {}), where, name)
    cfg = Config(family=family, source=where, **sections)
    if cross_check:
        _cross_check(cfg, where)
    return cfg


def _cross_check(cfg: Config, where: str) -> None:
    fam, tasks = cfg.family, cfg.tasks
    if cfg.regression != fam.regression:
        expected = "normal" if fam.regression else "categorical"
        raise ValueError(
            f"{where}: likelihood.kind = {cfg.likelihood.kind!r} does not fit family {fam.name!r}; expected {expected!r}"
        )
    if cfg.network.kind == "linear":
        if not fam.regression:
            raise ValueError(f"{where}: network.kind = 'linear' needs a regression family; expected kind = 'mlp'")
        if cfg.network.hidden:
            raise ValueError(f"{where}: network.hidden = {list(cfg.network.hidden)} with kind = 'linear'; expected []")
    if cfg.maml.meta_batch_size > tasks.num_train:
        raise ValueError(
            f"{where}: maml.meta_batch_size = {cfg.maml.meta_batch_size}; expected at most "
            f"tasks.num_train = {tasks.num_train}"
        )
    n = fam.points_multiple
    for key in ("num_support", "num_query", "num_test_query"):
        value = getattr(tasks, key)
        if value % n:
            raise ValueError(f"{where}: tasks.{key} = {value}; expected a multiple of family.num_classes = {n}")


def model_names() -> list[str]:
    """The ready-made models shipped in ``hbmeta.models`` (TOML files)."""
    return sorted(p.name[:-5] for p in resources.files("hbmeta.models").iterdir() if p.name.endswith(".toml"))


def resolve_source(source: str | None):
    """``(text, where)`` of a model name, a ``.toml`` path or a run directory (its ``config.toml``)."""
    source = "sinusoid" if source is None else os.fspath(source)
    if os.path.isdir(source):
        path = os.path.join(source, "config.toml")
        if not os.path.isfile(path):
            raise ValueError(f"{source!r} is a directory without config.toml; expected a run directory or a .toml file")
        source = path
    if os.path.isfile(source):
        with open(source, "rb") as fh:
            return fh.read().decode("utf-8", errors="replace"), source
    if source.endswith(".toml") or os.sep in source:
        raise ValueError(f"config file {source!r} does not exist; expected a path to a .toml file")
    names = model_names()
    if source not in names:
        raise ValueError(f"unknown model {source!r}; expected one of {', '.join(names)} or a path to a .toml file")
    return resources.files("hbmeta.models").joinpath(f"{source}.toml").read_text("utf-8"), f"model {source} ({source}.toml)"


def parse_override(text: str):
    """``"a.b=value"`` → ``(("a", "b"), value)``; the value is read as TOML, else as a bare string."""
    if "=" not in text:
        raise ValueError(f"override {text!r}; expected section.key=value, e.g. inference.nuts.num_samples=100")
    key, _, raw = text.partition("=")
    parts = tuple(p.strip() for p in key.strip().split("."))
    if len(parts) < 2 or not all(parts):
        raise ValueError(f"override {text!r}: key {key!r}; expected section.key, e.g. inference.method")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return parts, value


def apply_override(raw: dict, parts, value) -> dict:
    """A copy of ``raw`` with ``value`` set at the key path ``parts``."""
    out = dict(raw)
    node = out
    for p in parts[:-1]:
        child = node.get(p, {})
        if not isinstance(child, dict):
            raise ValueError(f"override {'.'.join(parts)}: {p} is a value, not a table")
        node[p] = dict(child)
        node = node[p]
    node[parts[-1]] = value
    return out


def load_config(source=None, overrides=(), *, method=None, seed=None, toy=None) -> Config:
    """Read, override and validate a configuration.

    Args:
        source: a ready-made model name (``hbmeta models``), a ``.toml`` path or
            a run directory; default ``"sinusoid"``.
        overrides: ``"section.key=value"`` strings, applied in order.
        method, seed, toy: shortcuts for ``inference.method``, ``run.seed`` and
            ``run.toy`` (applied after ``overrides``).

    Raises:
        ValueError: naming the file or override, the key and what is allowed.
    """
    text, where = resolve_source(source)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{where}: malformed TOML: {e}") from None
    cfg = from_dict(raw, where=where)
    items = [(*parse_override(o), f"override {o.strip()}") for o in overrides]
    for flag, key, name in ((method, ("inference", "method"), "--method"), (seed, ("run", "seed"), "--seed"),
                            (toy, ("run", "toy"), "--toy")):
        if flag is not None:
            items.append((key, flag, f"{name} {flag}"))
    for parts, value, what in items:
        if parts[0] == "family" and len(parts) == 2 and parts[1] == "name" and "family" in raw:
            raw = {**raw, "family": {"name": value}}  # another family: its own defaults
        raw = apply_override(raw, parts, value)
        from_dict(raw, where=what, cross_check=False)  # each override's key, type and range
    if items:
        where = f"{where} with " + ", ".join(what for _, _, what in items)
        cfg = from_dict(raw, where=where)  # and how the sections fit together
    return replace(cfg, source=where)

