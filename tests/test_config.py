"""Configuration files: parsing, validation messages, overrides, toy caps and the TOML writer."""

import dataclasses
import math
import os
import re
import tomllib

import pytest

from hbmeta.models import names as model_names
from hbmeta.run import toml_writer as _toml
from hbmeta.run.config import (
    SECTIONS,
    TOY_CAPS,
    Config,
    from_dict,
    load_config,
    parse_override,
)

MODELS = ["blobs", "linear", "radon", "sinusoid", "sinusoid_line", "sleepstudy"]


def test_the_ready_made_models_are_shipped():
    assert model_names() == MODELS


@pytest.mark.parametrize("name", MODELS)
def test_model_file_round_trips_through_the_written_toml(name, tmp_path):
    cfg = load_config(name)
    assert cfg.model.name == name and cfg.model.description
    text = cfg.to_toml()
    again = from_dict(tomllib.loads(text), where="written")
    assert again == cfg
    # every key of every section is written out, with its default when the file did not give it
    written = tomllib.loads(text)
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert f.name in written[section], (section, f.name)
    path = tmp_path / "config.toml"
    path.write_text(text)
    assert load_config(str(path)) == cfg
    assert load_config(str(tmp_path)) == cfg  # a run directory means its config.toml


def test_defaults_fill_what_a_file_leaves_out(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text('[model]\nname = "mine"\n[family]\nname = "linear"\ndim = 4\n')
    cfg = load_config(str(path))
    assert cfg.family.input_dim == 4 and cfg.family.name == "linear"
    assert dict(cfg.family.settings)["noise"] == 0.1  # LinearGaussian's own default
    assert cfg.likelihood.kind == "normal" and cfg.inference.nuts == SECTIONS["inference"]().nuts
    blobs = tmp_path / "b.toml"
    blobs.write_text('[family]\nname = "blobs"\nnum_classes = 3\n[tasks]\nnum_support = 6\nnum_query = 9\nnum_test_query = 9\n')
    assert load_config(str(blobs)).likelihood.kind == "categorical"  # follows the family


@pytest.mark.parametrize(
    "text, fragments",
    [
        ("[tasks]\nnum_trian = 3\n", ["unknown key tasks.num_trian", "allowed keys in [tasks]", "num_train"]),
        ("[taks]\n", ["unknown section [taks]", "allowed sections"]),
        ('[tasks]\nnum_train = "100"\n', ["tasks.num_train = '100'", "expected an integer >= 1"]),
        ("[tasks]\nnum_train = 2.5\n", ["tasks.num_train = 2.5", "expected an integer"]),
        ("[tasks]\nnum_train = 0\n", ["tasks.num_train = 0", "expected an integer >= 1"]),
        ("[adaptation]\nstep_size = -0.1\n", ["adaptation.step_size = -0.1", "expected a finite number > 0.0"]),
        ("[adaptation]\nfirst_order = 1\n", ["adaptation.first_order = 1", "expected true or false"]),
        ("[inference.nuts]\ntarget_accept_prob = 1.0\n", ["inference.nuts.target_accept_prob", "in (0.0, 1.0)"]),
        ('[inference]\nmethod = "mcmc"\n', ["inference.method = 'mcmc'", "'nuts'", "'svgd'"]),
        ("[network]\nhidden = [40, 0]\n", ["network.hidden = [40, 0]", "each >= 1"]),
        ('[likelihood]\nnoise = "fixed"\n', ["likelihood.noise = 'fixed'", "'inferred' or a number > 0"]),
        ('[family]\nname = "cosine"\n', ["family.name = 'cosine'", "'sinusoid'", "'blobs'"]),
        ("[family]\namplitude = [5.0]\n", ["family.amplitude = [5.0]", "[low, high] pair"]),
        ("[family]\nslope = [0, 1]\n", ["unknown key family.slope for family 'sinusoid'", "amplitude"]),
        ("[family]\namplitude = [5.0, 1.0]\n", ["family (sinusoid)", "amplitude=(5.0, 1.0)", "low <= high"]),
        ('[likelihood]\nkind = "categorical"\n', ["likelihood.kind = 'categorical'", "expected 'normal'"]),
        ("[maml]\nmeta_batch_size = 200\n", ["maml.meta_batch_size = 200", "at most tasks.num_train = 100"]),
        ('[network]\nkind = "linear"\n', ["network.hidden = [40, 40] with kind = 'linear'", "expected []"]),
        ('[family]\nname = "blobs"\nnum_classes = 3\n', ["tasks.num_support = 5", "multiple of family.num_classes = 3"]),
        ("[tasks\n", ["malformed TOML"]),
        ("tasks = 3\n", ["tasks is a int", "expected a table [tasks]"]),
    ],
)
def test_bad_files_name_the_file_the_key_and_what_is_allowed(tmp_path, text, fragments):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        load_config(str(path))
    message = str(info.value)
    assert message.startswith(str(path)), message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert "\n" not in message


def test_unknown_model_and_missing_file():
    with pytest.raises(ValueError, match=r"unknown model 'nope'; expected one of blobs, linear, radon, sinusoid"):
        load_config("nope")
    with pytest.raises(ValueError, match=r"config file 'no/such.toml' does not exist"):
        load_config("no/such.toml")


def test_overrides_are_typed_validated_and_named():
    cfg = load_config("sinusoid", ["inference.nuts.num_samples=123", "network.hidden=[20, 30]",
                                   "inference.method=svi", "prior.explicit_tau=0.5", 'model.description="a b"'])
    assert cfg.inference.nuts.num_samples == 123 and cfg.network.hidden == (20, 30)
    assert cfg.inference.method == "svi" and cfg.prior.explicit_tau == 0.5 and cfg.model.description == "a b"
    assert load_config("sinusoid", method="laplace", seed=7, toy=True).inference.method == "laplace"
    with pytest.raises(ValueError, match=r"^override inference.nuts.num_samples=abc: inference.nuts.num_samples = 'abc'"):
        load_config("sinusoid", ["inference.nuts.num_samples=abc"])
    with pytest.raises(ValueError, match=r"^override maml.nope=1: unknown key maml.nope"):
        load_config("sinusoid", ["maml.nope=1"])
    with pytest.raises(ValueError, match=r"^seed=-1: run.seed = -1; expected an integer >= 0"):
        load_config("sinusoid", seed=-1)
    with pytest.raises(ValueError, match=r"expected section.key=value"):
        load_config("sinusoid", ["inference.method"])
    with pytest.raises(ValueError, match=r"expected section.key"):
        load_config("sinusoid", ["method=svi"])
    with pytest.raises(ValueError, match=r"method is a value, not a table"):
        load_config("sinusoid", ["inference.method.x=4"])


def test_overrides_are_checked_together_against_each_other():
    with pytest.raises(ValueError, match=r"^model sinusoid \(sinusoid.toml\) with override maml.meta_batch_size=200: "
                                         r"maml.meta_batch_size = 200; expected at most tasks.num_train = 100"):
        load_config("sinusoid", ["maml.meta_batch_size=200"])
    assert load_config("sinusoid", ["maml.meta_batch_size=200", "tasks.num_train=200"]).maml.meta_batch_size == 200


def test_switching_family_starts_from_that_familys_defaults():
    cfg = load_config("sinusoid", ["family.name=linear", "network.kind=linear", "network.hidden=[]"])
    assert cfg.family.name == "linear" and dict(cfg.family.settings)["dim"] == 2


def test_parse_override_reads_toml_values_else_bare_strings():
    assert parse_override("a.b=3") == (("a", "b"), 3)
    assert parse_override("a.b = 0.5") == (("a", "b"), 0.5)
    assert parse_override("a.b=true") == (("a", "b"), True)
    assert parse_override("a.b=[1, 2]") == (("a", "b"), [1, 2])
    assert parse_override("a.b=svi") == (("a", "b"), "svi")
    assert parse_override("a.b.c='x=y'") == (("a", "b", "c"), "x=y")


def test_toy_caps_every_size_and_is_idempotent():
    cfg = load_config("sinusoid", toy=True)
    eff = cfg.effective()
    for path, caps in TOY_CAPS.items():
        section = eff
        for part in path.split("."):
            section = getattr(section, part)
        for key, cap in caps.items():
            assert getattr(section, key) <= cap, (path, key)
    assert eff.maml.num_iterations == 30 and eff.inference.nuts.num_samples == 10
    assert eff.effective() == eff and cfg.maml.num_iterations == 10000  # the written config keeps the full sizes
    small = load_config("sinusoid", ["inference.nuts.num_samples=5"], toy=True).effective()
    assert small.inference.nuts.num_samples == 5  # values below the caps are kept
    assert load_config("sinusoid").effective() == load_config("sinusoid")
    blobs = load_config("blobs", toy=True).effective()  # point counts stay multiples of the classes
    assert blobs.tasks.num_test_query == 9 and blobs.tasks.num_support == 6


def test_written_config_says_where_it_came_from_and_has_comments():
    text = load_config("linear", ["run.seed=3"]).to_toml()
    assert text.startswith("# hbmeta run configuration")
    assert text.splitlines()[1] == "# Resolved from: model linear (linear.toml) with override run.seed=3"
    assert 'method = "nuts"  # nuts | hmc | svi | laplace | svgd | ensemble | maml' in text


def test_config_is_frozen():
    cfg = load_config("linear")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.run = None
    assert isinstance(cfg, Config) and hash(cfg.tasks) == hash(load_config("linear").tasks)


@pytest.mark.parametrize(
    "value",
    ["plain", 'quote " and \\ backslash', "new\nline\ttab", "unicode θ φ̂ ✓", "\x7f\x01", "", "#not a comment"],
)
def test_toml_writer_round_trips_strings(value):
    table = {"s": {"v": value, "weird key": 1, "x.y": 2}}
    assert tomllib.loads(_toml.dumps(table)) == table


def test_toml_writer_round_trips_numbers_and_lists():
    table = {"n": {"i": -3, "big": 2**62, "f": 0.1, "tiny": 5e-324, "e": 1e300, "neg": -2.5,
                   "inf": math.inf, "ninf": -math.inf, "ints": [1, 2], "floats": [0.1, 1e-7], "empty": [],
                   "mixed": [1, "a", True]},
             "deep": {"a": {"b": {"c": 1}}}}
    back = tomllib.loads(_toml.dumps(table))
    assert back == table
    assert math.isnan(tomllib.loads(_toml.dumps({"t": {"x": math.nan}}))["t"]["x"])
    with pytest.raises(ValueError, match="cannot write a dict as TOML"):
        _toml.value({"a": 1})


def test_resolve_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config("sinusoid").family.name == "sinusoid"  # shipped in the package, not read from the cwd
    os.makedirs("empty")
    with pytest.raises(ValueError, match="is a directory without config.toml"):
        load_config("empty")


def test_task_posterior_section_reads_round_trips_and_builds_the_spec(tmp_path):
    cfg = load_config("sinusoid", ["task_posterior.kind=adapted", "inference.method=ensemble"])
    assert cfg.task_posterior.kind == "adapted" and cfg.task_posterior.tau == "inferred"
    path = tmp_path / "c.toml"
    path.write_text(cfg.to_toml())
    assert load_config(str(path)) == cfg
    fixed = load_config("linear", ["task_posterior.kind=theta", "task_posterior.tau=0.3"])
    assert fixed.task_posterior.tau == 0.3
    from hbmeta.run import build as _build

    tp = _build.task_posterior(fixed)
    assert tp.prior_mean == "theta" and tp.tau == 0.3 and tp.tau_prior_scale == 1.0
    inferred = _build.task_posterior(load_config("linear", ["task_posterior.kind=adapted"]))
    assert inferred.prior_mean == "adapted" and inferred.tau is None
    assert _build.task_posterior(load_config("linear")) is None


@pytest.mark.parametrize("overrides, fragment", [
    (["task_posterior.kind=both"], "task_posterior.kind = 'both'"),
    (["task_posterior.tau=-1"], "task_posterior.tau = -1"),
    (["task_posterior.kind=adapted", "prior.explicit_tau=0.5"], "expected only one"),
    (["task_posterior.kind=adapted", "inference.method=maml"], "expected a method that fits τ and σ"),
    (["task_posterior.kind=adapted", "inference.method=ensemble", "task_posterior.tau=0.2"],
     "expected tau = 'inferred' and holdout = 'folds'"),
])
def test_task_posterior_bad_settings_are_named(overrides, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        load_config("sinusoid", overrides)


def test_task_posterior_classification_needs_the_ensemble():
    with pytest.raises(ValueError, match=r"likelihood.kind = 'categorical' and inference.method = 'nuts'"):
        load_config("blobs", ["task_posterior.kind=adapted", "inference.method=nuts"])
    assert load_config("blobs", ["task_posterior.kind=adapted", "inference.method=ensemble"]).task_posterior.kind == "adapted"


@pytest.mark.parametrize("model", ["sinusoid", "sinusoid_line", "blobs"])
def test_auto_task_posterior_is_on_for_the_folded_ensemble_only_and_written_resolved(model, tmp_path):
    cfg = load_config(model)  # the model file: method ensemble, holdout folds, task_posterior.kind = "auto"
    assert cfg.inference.method == "ensemble" and cfg.task_posterior.kind == "adapted"
    for overrides in (["inference.method=nuts"], ["inference.method=maml"], ["inference.method=svi"],
                      ["inference.ensemble.holdout=none"], ["task_posterior.tau=0.5"]):
        assert load_config(model, overrides).task_posterior.kind == "off", overrides
    assert load_config(model, method="maml").inference.method == "maml"  # auto never refuses a method
    path = tmp_path / "c.toml"
    path.write_text(cfg.to_toml())
    assert 'kind = "adapted"' in path.read_text() and load_config(str(path)) == cfg  # the run's copy says which
    if model == "blobs":  # an explicit kind stays explicit: NUTS has no in-model integral for classification
        with pytest.raises(ValueError, match="expected method 'ensemble'"):
            load_config(str(path), method="nuts")
    else:
        assert load_config(str(path), method="nuts").task_posterior.kind == "adapted"


def test_ensemble_member_devices_reaches_run_ensemble():
    from hbmeta.run import build as _build

    auto = load_config("sinusoid", [])
    assert auto.inference.ensemble.member_devices == 0 and _build.method_settings(auto)["member_devices"] == "auto"
    one = load_config("sinusoid", ["inference.ensemble.member_devices=1"])
    assert _build.method_settings(one)["member_devices"] == 1
    with pytest.raises(ValueError, match="inference.ensemble.member_devices = -1; expected"):
        load_config("sinusoid", ["inference.ensemble.member_devices=-1"])
