"""ArviZ conversion and leave-one-task-out LOO.

With :mod:`hbmeta.diagnostics.netcdf` (the files) and :mod:`hbmeta.diagnostics.diagnose` (R-hat and ESS through
``_az``), this is the only module that calls ArviZ. It runs on arviz
0.23 (``InferenceData``) and on arviz ≥ 1.0 (xarray ``DataTree``), branching on
the version where the two differ (``from_dict``'s signature, group access,
NetCDF loading). Dimensions are named: ``chain``, ``draw``, ``task``,
``point`` (query points), ``support_point``, ``feature``, ``output``,
``class``, ``parameter``, ``reference_task`` and ``reference_point``.
"""

from __future__ import annotations

import json
import warnings

import jax
import numpy as np

from hbmeta.base.jax_checks import as_key
from hbmeta.base.validate import check_type
from hbmeta.diagnostics.loglik import task_log_likelihood
from hbmeta.model.posterior import Posterior
from hbmeta.predict.predictive import Predictive, sample_predictive
from hbmeta.tasks.batch import TaskBatch

with warnings.catch_warnings():
    # ArviZ 0.23 prints a once-a-day notice of its coming 1.0 refactor when imported; hbmeta supports both
    # versions (see _v1), so the notice would only puzzle a user of the command line.
    warnings.filterwarnings("ignore", message=r"\s*ArviZ is undergoing a major refactor", category=FutureWarning)
    import arviz

_STAT_NAMES = {"potential_energy": "lp", "accept_prob": "acceptance_rate", "num_steps": "n_steps"}


def _az():
    return arviz


def _v1(az) -> bool:
    return int(az.__version__.split(".")[0]) >= 1


def _is_idata(obj) -> bool:
    az = _az()
    if _v1(az):
        import xarray  # only with ArviZ >= 1, which brings it

        return isinstance(obj, xarray.DataTree)
    return isinstance(obj, az.InferenceData)


def _group_names(idata) -> list:
    if not _is_idata(idata):
        return []
    return list(idata.children) if _v1(_az()) else list(idata.groups())


def _group(idata, name):
    """One group as an ``xarray.Dataset``."""
    return idata[name].to_dataset() if _v1(_az()) else getattr(idata, name)


def _from_dict(groups: dict, *, coords, dims, attrs):
    az = _az()
    groups = {name: data for name, data in groups.items() if data}
    with warnings.catch_warnings():  # an ensemble has more chains (members) than draws (one each), on purpose
        warnings.filterwarnings("ignore", message="More chains", category=UserWarning)
        if _v1(az):
            return az.from_dict(groups, coords=coords, dims=dims, attrs={"/": attrs})
        return az.from_dict(**groups, coords=coords, dims=dims, attrs=attrs)


def _check_key(key):
    return jax.random.key(0) if key is None else as_key(key)


def _trim(tasks: TaskBatch, num_tasks: int, num_points: int) -> TaskBatch:
    t = tasks.take(np.arange(min(num_tasks, tasks.num_tasks)))
    m = slice(0, min(num_points, t.x_query.shape[1]))
    return t._replace(x_query=t.x_query[:, m], y_query=t.y_query[:, m],
                      query_mask=None if t.query_mask is None else t.query_mask[:, m])


def _reference_values(posterior, reference, key):
    pred = sample_predictive(posterior, reference, key=key)
    return pred.mean if pred.regression else pred.probs


def _posterior_vars(posterior: Posterior, reference, key):
    """Posterior-group variables and their dims (draw axes excluded)."""
    data, dims = {}, {}
    for name, value in posterior.samples.items():
        data[name] = np.asarray(value)
    dims["theta"] = ["parameter"]
    if "phi" in data and data["phi"].ndim == 4:
        dims["phi"] = ["fitted_task", "parameter"]
    if "distance_scales" in data:  # an ensemble's per-point factor: B bins split by B − 1 edges
        dims.update(distance_edges=["distance_edge"], distance_scales=["distance_bin"])
    if reference is not None:
        check_type("reference", reference, TaskBatch, hint=" or None")
        data["reference_prediction"] = _reference_values(posterior, reference, key)
        last = "output" if posterior.spec.likelihood.regression else "class"
        dims["reference_prediction"] = ["reference_task", "reference_point", last]
    return data, dims


def to_arviz(posterior: Posterior, tasks: TaskBatch, *, reference=None, predictive=None, key=None, devices=None):
    """ArviZ data of a posterior (any method) and the tasks it was fitted on.

    Groups: ``posterior`` (``theta`` over ``parameter``, ``noise``,
    ``step_size`` and any other site; ``reference_prediction`` when
    ``reference`` tasks are given: the predictions at their query inputs,
    invariant functionals for :func:`diagnose`), ``sample_stats`` (MCMC:
    ``diverging``, ``lp`` = −potential energy, ``acceptance_rate``,
    ``n_steps``, ``step_size``), ``log_likelihood`` (``y`` over ``task``: the
    log-likelihood of each task's query set under its adapted model,
    ``Σ_q log p(y_q | φ̂ˢ_j)``, computed in one vectorised pass from the
    predictive), ``posterior_predictive`` (``y`` sampled), ``observed_data``
    (``y``, the query targets) and ``constant_data`` (support and query
    inputs, support targets, masks, reference inputs).

    Args:
        posterior: a :class:`~hbmeta.Posterior`.
        tasks: the tasks the posterior was fitted on (for LOO and checks).
        reference: optional :class:`~hbmeta.TaskBatch` of reference tasks.
        predictive: a :class:`~hbmeta.Predictive` of ``tasks`` already sampled,
            to avoid sampling it again.
        key: PRNG key for the sampled targets (default ``jax.random.key(0)``).
        devices: split the tasks of the predictive (and so of the per-task
            log-likelihood) over these devices (:func:`~hbmeta.sample_predictive`).

    Example:
        >>> import jax
        >>> import hbmeta as hb
        >>> net = hb.mlp((1, 8, 1)); theta = net.init(jax.random.key(0))
        >>> spec = hb.ModelSpec(hb.GradientSteps(net.apply), theta, likelihood=hb.NormalLikelihood(noise=0.5))
        >>> flat = spec.ravel(theta) + 0.01 * jax.random.normal(jax.random.key(1), (2, 10, spec.num_params))
        >>> post = hb.Posterior({"theta": flat}, spec, "custom", {})
        >>> idata = hb.to_arviz(post, hb.Sinusoid().sample(jax.random.key(2), 3))
        >>> dict(idata.log_likelihood["y"].sizes)
        {'chain': 2, 'draw': 10, 'task': 3}
    """
    check_type("posterior", posterior, Posterior)
    check_type("tasks", tasks, TaskBatch)
    k_pred, k_ref = jax.random.split(_check_key(key))
    if predictive is None:
        predictive = sample_predictive(posterior, tasks, key=k_pred, devices=devices)
    expected = (posterior.num_chains, posterior.num_draws) + tuple(tasks.x_query.shape[:2])
    if not isinstance(predictive, Predictive) or predictive.y.shape[:4] != expected:
        got = getattr(getattr(predictive, "y", None), "shape", None)
        raise ValueError(f"predictive has y of shape {got}; expected a hbmeta.Predictive with leading shape {expected}")
    fixed, coords, dims, attrs = _fixed_groups(posterior, tasks, reference, k_ref)
    groups = {"posterior": fixed["posterior"], "sample_stats": fixed["sample_stats"],
              "log_likelihood": {"y": task_log_likelihood(predictive, tasks)},
              "posterior_predictive": {"y": predictive.y},
              "observed_data": fixed["observed_data"], "constant_data": fixed["constant_data"]}
    return _from_dict(groups, coords=coords, dims=dims, attrs=attrs)


def _fixed_groups(posterior: Posterior, tasks: TaskBatch, reference, k_ref):
    """Every group of :func:`to_arviz` but the two that grow with draws × tasks (the log-likelihood and the
    predictive), with the coords, dims and attributes of all of them: ``(groups, coords, dims, attrs)``."""
    regression = posterior.spec.likelihood.regression
    post, dims = _posterior_vars(posterior, reference, k_ref)
    y_dims = ["task", "point", "output"] if regression else ["task", "point"]
    dims.update({
        "y": y_dims,
        "x_support": ["task", "support_point", "feature"],
        "y_support": ["task", "support_point", "output"] if regression else ["task", "support_point"],
        "x_query": ["task", "point", "feature"],
        "support_mask": ["task", "support_point"],
        "query_mask": ["task", "point"],
        "reference_x_support": ["reference_task", "reference_support_point", "feature"],
        "reference_y_support": ["reference_task", "reference_support_point"] + (["output"] if regression else []),
        "reference_x": ["reference_task", "reference_point", "feature"],
    })
    stats = {}
    for name, value in posterior.sample_stats.items():
        value = np.asarray(value)
        if value.shape[:2] == (posterior.num_chains, posterior.num_draws):
            stats[_STAT_NAMES.get(name, name)] = -value if name == "potential_energy" else value
    constant = {"x_support": tasks.x_support, "y_support": tasks.y_support, "x_query": tasks.x_query}
    for name in ("support_mask", "query_mask"):
        if getattr(tasks, name) is not None:
            constant[name] = getattr(tasks, name)
    if reference is not None:
        constant.update(reference_x_support=reference.x_support, reference_y_support=reference.y_support,
                        reference_x=reference.x_query)
    settings = json.dumps(posterior.settings, default=str, sort_keys=True)
    groups = {
        "posterior": post,
        "sample_stats": stats,
        "observed_data": {"y": np.asarray(tasks.y_query)},
        "constant_data": {k: np.asarray(v) for k, v in constant.items()},
    }
    coords = {"task": np.arange(tasks.num_tasks), "point": np.arange(tasks.x_query.shape[1])}
    return groups, coords, dims, {"inference_library": "hbmeta", "method": posterior.method, "settings": settings}


def loo(idata, **kwargs):
    """Leave-one-task-out PSIS-LOO: ``az.loo`` on the per-task log-likelihood ``y`` (one value per task and draw).

    ``elpd_loo`` estimates Σ_j log p(Q_j | other tasks) for a new task's query
    set given its support set; Pareto k above 0.7 flags tasks whose removal
    would change the posterior a lot (ArviZ warns about them).
    """
    if "log_likelihood" not in _group_names(idata) or "y" not in _group(idata, "log_likelihood"):
        raise ValueError("idata has no log_likelihood group with 'y'; expected the output of hbmeta.to_arviz")
    return _az().loo(idata, var_name="y", pointwise=True, **kwargs)
