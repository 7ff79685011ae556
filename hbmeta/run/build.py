"""From a :class:`~hbmeta.run.config.Config` to hbmeta objects: tasks, network, rule, spec, settings.

Every function here is a plain translation of configuration values into the
library's own constructors (:class:`~hbmeta.Sinusoid`, :func:`~hbmeta.mlp`,
:class:`~hbmeta.GradientSteps`, :class:`~hbmeta.ModelSpec`, …), so a run
from the command line and a script that calls the library directly build
exactly the same model. :func:`build_objects` builds them all once, as a
:class:`RunObjects`, which the pipeline hands to every stage (training,
inference, evaluation, reports and pictures); no stage reads the
configuration again.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from hbmeta.adaptation.networks import Network, linear, mlp
from hbmeta.adaptation.steps import GradientSteps
from hbmeta.inference.common import make_optimizer
from hbmeta.model.spec import (
    CategoricalLikelihood,
    ModelSpec,
    NormalLikelihood,
    NormalPrior,
    StepSizePrior,
    TaskPosterior,
)
from hbmeta.run.config import Config


class RunObjects(NamedTuple):
    """Everything a run builds from its configuration, once.

    - ``train_family``, ``heldout_family``: the task family with the training
      and the held-out point counts.
    - ``network``: the :class:`~hbmeta.Network`; ``linear``: whether it is the linear model.
    - ``rule``: the :class:`~hbmeta.GradientSteps` adaptation rule.
    - ``maml_optimizer``: the optax meta-optimiser.
    - ``method``, ``method_settings``: the inference method and its keyword arguments for :func:`~hbmeta.infer`.
    - ``keys``: independent PRNG keys per stage (:func:`keys`).
    """

    train_family: Any
    heldout_family: Any
    network: Network
    linear: bool
    rule: GradientSteps
    maml_optimizer: Any
    method: str
    method_settings: dict
    keys: dict


def build_objects(cfg: Config, *, input_dim: int | None = None) -> RunObjects:
    """The :class:`RunObjects` of the (effective) configuration ``cfg``.

    For a ``[data]`` table, ``input_dim`` is its number of encoded features and there is no task family.
    """
    net = network(cfg, input_dim=input_dim)
    table = bool(cfg.data.path)
    return RunObjects(
        train_family=None if table else train_family(cfg),
        heldout_family=None if table else heldout_family(cfg),
        network=net,
        linear=cfg.network.kind == "linear",
        rule=rule(cfg, net),
        maml_optimizer=maml_optimizer(cfg),
        method=cfg.inference.method,
        method_settings=method_settings(cfg),
        keys=keys(cfg.run.seed),
    )


def train_family(cfg: Config):
    """The task family with the training point counts (K support, M query)."""
    return cfg.family.build(num_support=cfg.tasks.num_support, num_query=cfg.tasks.num_query)


def heldout_family(cfg: Config):
    """The task family with the held-out point counts (K support, ``num_test_query`` query)."""
    return cfg.family.build(num_support=cfg.tasks.num_support, num_query=cfg.tasks.num_test_query)


def draw_tasks(family, key, num_tasks: int):
    """``(tasks, task_params)``: ``num_tasks`` tasks of ``family`` drawn in one compiled call."""
    return jax.jit(lambda k: family.sample(k, num_tasks, return_params=True))(key)


def network(cfg: Config, *, input_dim: int | None = None) -> Network:
    """The network of ``[network]``: input and output sizes come from the family (or ``input_dim``, a table's)."""
    if cfg.network.kind == "linear":
        return linear()
    sizes = (cfg.family.input_dim if input_dim is None else int(input_dim), *cfg.network.hidden, cfg.family.output_dim)
    return mlp(sizes, activation=cfg.network.activation, init=cfg.network.init)


def initial_params(cfg: Config, net: Network, key, *, input_dim: int | None = None):
    """θ₀ for meta-training: the MLP's random initialisation, or zeros for the linear model."""
    if cfg.network.kind == "linear":
        return {"w": jnp.zeros((cfg.family.input_dim if input_dim is None else int(input_dim),))}
    return net.init(key)


def rule(cfg: Config, net: Network, *, step_size=None) -> GradientSteps:
    """The gradient-step rule; the loss follows the likelihood (mse or cross-entropy)."""
    return GradientSteps(
        net.apply,
        loss="mse" if cfg.regression else "cross_entropy",
        step_size=cfg.adaptation.step_size if step_size is None else float(step_size),
        num_steps=cfg.adaptation.num_steps,
        first_order=cfg.adaptation.first_order,
    )


def spec(cfg: Config, net: Network, params, *, step_size=None, rule_=None) -> ModelSpec:
    """The :class:`~hbmeta.ModelSpec`: ``params`` is the template (and the prior's centre when ``centre = "maml"``).

    ``rule_`` is the already built rule (:class:`RunObjects`); it is rebuilt only with a learned ``step_size``.
    """
    p, lik = cfg.prior, cfg.likelihood
    prior = NormalPrior(loc=p.loc, scale=p.scale, centre=params if p.centre == "maml" else None)
    if cfg.regression:
        noise = None if lik.noise == "inferred" else float(lik.noise)
        likelihood = NormalLikelihood(noise=noise, noise_prior_scale=lik.noise_prior_scale)
    else:
        likelihood = CategoricalLikelihood()
    r = rule_ if rule_ is not None and step_size is None else rule(cfg, net, step_size=step_size)
    ssp = StepSizePrior(loc=math.log(float(r.step_size)), scale=p.step_size_scale) if p.infer_step_size else None
    tau = None if p.explicit_tau == "off" else float(p.explicit_tau)
    return ModelSpec(r, params, prior=prior, likelihood=likelihood, step_size_prior=ssp, explicit_tau=tau,
                     task_posterior=task_posterior(cfg))


def task_posterior(cfg: Config) -> TaskPosterior | None:
    """The :class:`~hbmeta.TaskPosterior` of ``[task_posterior]``, or None with ``kind = "off"``."""
    tp = cfg.task_posterior
    if tp.kind == "off":
        return None
    return TaskPosterior(tau=None if tp.tau == "inferred" else float(tp.tau), tau_prior_scale=tp.tau_prior_scale,
                         prior_mean=tp.kind)


def method_settings(cfg: Config, method: str | None = None) -> dict:
    """Keyword arguments for :func:`~hbmeta.infer` (without ``key``, ``init`` and ``progress``)."""
    method = cfg.inference.method if method is None else method
    s = cfg.method_settings(method)
    if method in ("nuts", "hmc"):
        out = {
            "num_chains": s.num_chains,
            "num_warmup": s.num_warmup,
            "num_samples": s.num_samples,
            "target_accept_prob": s.target_accept_prob,
            "dense_mass": s.dense_mass,
            "subspace": s.subspace,
        }
        if method == "nuts":
            out["max_tree_depth"] = s.max_tree_depth
        return out
    if method == "svi":
        out = {"guide": s.guide, "num_steps": s.num_steps, "num_draws": s.num_draws,
               "optimizer": make_optimizer("adam", s.learning_rate)}
        if s.guide == "low_rank" and s.rank > 0:
            out["rank"] = s.rank
        if s.subsample_size > 0:
            out["subsample_size"] = s.subsample_size
        return out
    if method == "laplace":
        return {"num_steps": s.num_steps, "num_draws": s.num_draws,
                "optimizer": make_optimizer(s.optimizer, s.learning_rate)}
    if method == "svgd":
        return {"num_particles": s.num_particles, "num_steps": s.num_steps,
                "optimizer": make_optimizer(s.optimizer, s.learning_rate)}
    if method == "ensemble":  # the members train like MAML: the [maml] optimiser
        return {"num_members": s.num_members, "num_iterations": s.num_iterations,
                "meta_batch_size": s.meta_batch_size, "holdout": s.holdout, "tails": s.tails,
                "spread_scale": s.spread_scale, "class_scale": s.class_scale,
                "distance_scale": s.distance_scale,
                "member_devices": s.member_devices or "auto", "optimizer": maml_optimizer(cfg)}
    return {}


def maml_optimizer(cfg: Config):
    """Adam with the configured learning rate, after clipping the meta-gradient's global norm if asked."""
    adam = optax.adam(cfg.maml.learning_rate)
    return adam if cfg.maml.clip_norm == 0 else optax.chain(optax.clip_by_global_norm(cfg.maml.clip_norm), adam)


def keys(seed: int) -> dict:
    """Independent PRNG keys for each stage of a run, from one seed."""
    names = ("train", "test", "init", "maml", "infer", "predict", "predict_maml", "arviz")
    return dict(zip(names, jax.random.split(jax.random.key(seed), len(names))))
