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
    >>> from hbmeta.run.config import load_config
    >>> cfg = load_config("sinusoid", ["inference.nuts.num_samples=100"])
    >>> cfg.inference.nuts.num_samples, cfg.family.name
    (100, 'sinusoid')
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace

from hbmeta import models
from hbmeta.run import toml_writer as _toml
from hbmeta.run.config_fields import FAMILIES, FamilyConfig, check, parse_family
from hbmeta.run.config_sections import (
    SECTIONS,
    TOY_CAPS,
    AdaptationSection,
    DataSection,
    EvaluationSection,
    InferenceSection,
    LikelihoodSection,
    MAMLSection,
    ModelSection,
    NetworkSection,
    PriorSection,
    RunSection,
    TaskPosteriorSection,
    TasksSection,
)


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
    data: DataSection = field(default_factory=DataSection)
    task_posterior: TaskPosteriorSection = field(default_factory=TaskPosteriorSection)
    source: str = field(default="<defaults>", compare=False)

    @property
    def regression(self) -> bool:
        return self.likelihood.kind == "normal"

    def method_settings(self, method: str | None = None):
        """The settings section of ``method`` (default: the configured one), or None for maml."""
        method = self.inference.method if method is None else method
        name = "nuts" if method == "hmc" else method
        return getattr(self.inference, name, None)

    @property
    def store_read_lazily(self) -> bool:
        """Whether the run reads its ``tasks.store`` a few tasks a step: MAML, or SVI with a ``subsample_size``.

        Every other method scores every training task a step, and the store is then loaded whole.
        """
        m = self.inference.method
        return bool(self.tasks.store) and (m == "maml" or (m == "svi" and self.inference.svi.subsample_size > 0))

    def effective(self) -> Config:
        """The configuration that runs: with ``run.toy``, every size capped to :data:`TOY_CAPS`.

        A task store read a few tasks a step (:attr:`store_read_lazily`) keeps its count: the cost of a
        step does not grow with it.
        """
        if not self.run.toy:
            return self
        cfg = self
        for path, caps in TOY_CAPS.items():
            cfg = _replace_path(cfg, path, caps)
        if self.store_read_lazily:
            cfg = replace(cfg, tasks=replace(cfg.tasks, num_train=self.tasks.num_train))
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
        cfg = _resolve_auto(cfg)
        _cross_check(cfg, where)
    return cfg


def _resolve_auto(cfg: Config) -> Config:
    """``task_posterior.kind = "auto"`` made concrete for the method that runs (so ``config.toml`` says which).

    ``"adapted"`` with the ensemble fitted on held-out folds (its τ and σ cost seconds there), ``"off"``
    with every other method: NUTS, SVI, Laplace and SVGD would differentiate through the task-level model,
    about 80 times the cost of a plain gradient, and MAML's point estimate has no τ to fit.
    """
    tp = cfg.task_posterior
    if tp.kind != "auto":
        return cfg
    use = (cfg.inference.method == "ensemble" and cfg.inference.ensemble.holdout == "folds"
           and tp.tau == "inferred" and cfg.prior.explicit_tau == "off")
    return replace(cfg, task_posterior=replace(tp, kind="adapted" if use else "off"))


def _cross_check(cfg: Config, where: str) -> None:
    _check_task_posterior(cfg, where)
    _check_subsample(cfg, where)
    _check_chain_starts(cfg, where)
    if cfg.data.path:
        if cfg.tasks.store:
            raise ValueError(f"{where}: tasks.store = {cfg.tasks.store!r} with a [data] table (data.path = "
                             f"{cfg.data.path!r}); expected one source of training tasks: set tasks.store = \"\" "
                             "or data.path = \"\"")
        _check_data(cfg, where)
        return
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
    if cfg.maml.meta_batch_size > tasks.num_train and not tasks.store:  # a store: capped at its count
        raise ValueError(
            f"{where}: maml.meta_batch_size = {cfg.maml.meta_batch_size}; expected at most "
            f"tasks.num_train = {tasks.num_train}"
        )
    n = fam.points_multiple
    for key in ("num_support", "num_query", "num_test_query"):
        value = getattr(tasks, key)
        if value % n:
            raise ValueError(f"{where}: tasks.{key} = {value}; expected a multiple of family.num_classes = {n}")


def _check_chain_starts(cfg: Config, where: str) -> None:
    """NUTS/HMC from ensemble members: every member the same number of chains; a subspace needs an anchor."""
    nuts = cfg.inference.nuts
    if cfg.inference.method not in ("nuts", "hmc"):
        return
    if nuts.members and nuts.num_chains % nuts.members:
        raise ValueError(f"{where}: inference.nuts.num_chains = {nuts.num_chains} with inference.nuts.members = "
                         f"{nuts.members}; expected a multiple of members (the same number of chains from each)")
    if nuts.subspace != "all" and not nuts.members and cfg.inference.init == "prior":
        raise ValueError(f"{where}: inference.nuts.subspace = {nuts.subspace!r} with inference.init = 'prior' and no "
                         "members; expected a start whose other weights the chains hold: inference.init = 'maml' or "
                         "inference.nuts.members > 0")
    if nuts.subspace == "last_layer" and (cfg.network.kind == "linear" or not cfg.network.hidden):
        raise ValueError(f"{where}: inference.nuts.subspace = 'last_layer' with network.kind = {cfg.network.kind!r} "
                         f"and hidden = {list(cfg.network.hidden)} (one layer); expected subspace = 'all'")


def _check_subsample(cfg: Config, where: str) -> None:
    """SVI's ``subsample_size``: at most the training tasks; not with a joint guide over the per-task φ_j."""
    svi = cfg.inference.svi
    if not svi.subsample_size or cfg.inference.method != "svi":
        return
    if not cfg.data.path and not cfg.tasks.store and svi.subsample_size > cfg.tasks.num_train:
        raise ValueError(f"{where}: inference.svi.subsample_size = {svi.subsample_size}; expected at most "
                         f"tasks.num_train = {cfg.tasks.num_train} (or 0: every task)")
    if cfg.prior.explicit_tau != "off" and svi.guide in ("low_rank", "full_rank"):
        raise ValueError(f"{where}: inference.svi.subsample_size = {svi.subsample_size} with guide = {svi.guide!r} "
                         f"and prior.explicit_tau = {cfg.prior.explicit_tau}; expected guide 'mean_field' or 'map' "
                         "(a joint guide cannot subsample the per-task φ_j) or subsample_size = 0")


def _check_task_posterior(cfg: Config, where: str) -> None:
    """``[task_posterior]`` needs a posterior over θ; classification and the ensemble fit τ on held-out folds."""
    tp, method = cfg.task_posterior, cfg.inference.method
    if tp.kind == "off":
        return
    if cfg.prior.explicit_tau != "off":
        raise ValueError(f"{where}: task_posterior.kind = {tp.kind!r} with prior.explicit_tau = {cfg.prior.explicit_tau}; "
                         "expected only one (both put φ_j ~ N(θ, τ²I) under each task): set explicit_tau = 'off'")
    if method == "maml":
        raise ValueError(f"{where}: task_posterior.kind = {tp.kind!r} with inference.method = 'maml'; expected a "
                         "method that fits τ and σ, e.g. 'ensemble' (on held-out folds) or a sampler such as 'nuts'")
    if method == "ensemble":
        if tp.tau != "inferred" or cfg.inference.ensemble.holdout != "folds":
            raise ValueError(f"{where}: task_posterior.tau = {tp.tau!r} and inference.ensemble.holdout = "
                             f"{cfg.inference.ensemble.holdout!r}; expected tau = 'inferred' and holdout = 'folds' "
                             "(each member's τ and σ are fitted on the tasks it did not train on)")
    elif not cfg.regression:
        raise ValueError(f"{where}: task_posterior.kind = {tp.kind!r} with likelihood.kind = 'categorical' and "
                         f"inference.method = {method!r}; expected method 'ensemble' (the in-model task-level "
                         "integral is for regression only)")


def _check_data(cfg: Config, where: str) -> None:
    """A ``[data]`` run: the table's columns are named and the model is a regression one (the table is read later)."""
    d = cfg.data
    for key in ("task", "x", "y"):
        if not getattr(d, key):
            raise ValueError(f"{where}: data.{key} is empty; expected the name of the "
                             + {"task": "group column", "x": "input column(s), e.g. [\"days\"]",
                                "y": "target column"}[key]
                             + f" of the table data.path = {d.path!r}")
    if not cfg.regression:
        raise ValueError(f"{where}: likelihood.kind = {cfg.likelihood.kind!r} with a [data] table; expected 'normal' "
                         "(tables give real-valued targets)")
    if cfg.network.kind == "linear" and cfg.network.hidden:
        raise ValueError(f"{where}: network.hidden = {list(cfg.network.hidden)} with kind = 'linear'; expected []")
    unknown = sorted(set(d.categorical) - set(d.x))
    if unknown:
        raise ValueError(f"{where}: data.categorical = {list(d.categorical)}: {unknown} not in data.x = {list(d.x)}")


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
            text = fh.read().decode("utf-8", errors="replace")
        if not text.strip():
            raise ValueError(f"config file {source!r} is empty; expected TOML sections such as [model] and [family] "
                             "(an emptied file would silently run every default)")
        return text, source
    if source.endswith(".toml") or os.sep in source:
        raise ValueError(f"config file {source!r} does not exist; expected a path to a .toml file")
    names = models.names()
    if source not in names:
        raise ValueError(f"unknown model {source!r}; expected one of {', '.join(names)} or a path to a .toml file")
    return models.read(source), f"model {source} ({source}.toml)"


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

    Example:
        >>> cfg = load_config("linear", ["maml.num_iterations=500"], method="svi", toy=True)
        >>> cfg.maml.num_iterations, cfg.inference.method, cfg.effective().maml.num_iterations
        (500, 'svi', 30)
    """
    text, where = resolve_source(source)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{where}: malformed TOML: {e}") from None
    cfg = from_dict(raw, where=where)
    items = []
    for o in overrides:  # "a.b=value", or ("a.b=value", label) where the caller names it its own way
        text, label = (o, f"override {o.strip()}") if isinstance(o, str) else o
        items.append((*parse_override(text), label))
    for value, key, name in ((method, ("inference", "method"), "method"), (seed, ("run", "seed"), "seed"),
                             (toy, ("run", "toy"), "toy")):
        if value is not None:
            items.append((key, value, f"{name}={value!r}"))
    for parts, value, what in items:
        if parts[0] == "family" and len(parts) == 2 and parts[1] == "name" and "family" in raw:
            raw = {**raw, "family": {"name": value}}  # another family: its own defaults
        raw = apply_override(raw, parts, value)
        from_dict(raw, where=what, cross_check=False)  # each override's key, type and range
    if items:
        where = f"{where} with " + ", ".join(what for _, _, what in items)
        cfg = from_dict(raw, where=where)  # and how the sections fit together
    return replace(cfg, source=where)

