"""The method registry is the one source of truth: library defaults, configuration defaults and names agree."""

import inspect

import pytest

import hbmeta as hb
from hbmeta.cli.main import CommandError, _parse
from hbmeta.inference import registry
from hbmeta.inference.common import default_optimizer, make_optimizer
from hbmeta.inference.dispatch import allowed_settings
from hbmeta.run import build as _build
from hbmeta.run.config import load_config
from hbmeta.run.config_sections import InferenceSection


@pytest.mark.parametrize("name", sorted(registry.METHODS))
def test_library_defaults_are_the_registry_defaults(name):
    m = registry.get(name)
    params = inspect.signature(m.load()).parameters
    for setting, default in m.defaults.items():
        assert setting in params, f"{name}: {setting} is not an argument of {m.function}"
        assert params[setting].default == default, (name, setting, params[setting].default, default)
    for setting in m.fixed:
        assert setting in params


@pytest.mark.parametrize("name", ["nuts", "svi", "laplace", "svgd"])
def test_configuration_defaults_are_the_registry_defaults(name):
    section = getattr(InferenceSection(), name)
    m = registry.get(name)
    for setting, default in m.defaults.items():
        if default is None:  # e.g. the low-rank guide's rank: 0 in the configuration means "automatic"
            continue
        assert getattr(section, setting) == default, (name, setting)
    if m.optimizer is not None and m.optimizer[1] is not None:
        assert section.learning_rate == m.optimizer[1]


def test_configured_settings_reach_infer_with_the_library_defaults():
    cfg = load_config("sinusoid", ["inference.method=svgd"])
    s = _build.method_settings(cfg)
    assert s["num_particles"] == registry.get("svgd").defaults["num_particles"]
    assert set(s) <= set(allowed_settings("svgd"))


def test_every_configurable_method_is_a_registry_method_and_vice_versa():
    for name in registry.METHODS:
        assert _parse(["run", "--method", name]).method == name
    with pytest.raises(CommandError, match="invalid choice: 'nope'"):
        _parse(["run", "--method", "nope"])


def test_unknown_method_and_maml_through_infer():
    import jax
    import jax.numpy as jnp

    spec = hb.ModelSpec(hb.GradientSteps(hb.linear().apply, step_size=0.1), {"w": jnp.zeros(2)})
    tasks = hb.LinearGaussian(dim=2).sample(jax.random.key(0), 6)
    with pytest.raises(ValueError, match=r"method='nope' is not known; expected one of \['nuts'"):
        hb.infer(spec, tasks, method="nope", key=0)
    with pytest.raises(ValueError, match="method='maml' needs init="):
        hb.infer(spec, tasks, method="maml", key=0)
    post = hb.infer(spec, tasks, method="maml", key=0, init={"w": jnp.ones(2)})
    direct = hb.maml_posterior(spec, {"w": jnp.ones(2)}, tasks)
    assert post.method == "maml"
    assert float(post.samples["noise"][0, 0]) == pytest.approx(float(direct.samples["noise"][0, 0]))


def test_default_optimizers_are_named_and_built_from_the_registry():
    opt, name = default_optimizer("svgd")
    assert name == "adagrad(0.1)" and hasattr(opt, "update")
    with pytest.raises(ValueError, match="optimizer='nope' is not an optax optimiser"):
        make_optimizer("nope", 0.1)
