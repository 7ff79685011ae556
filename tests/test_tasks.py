"""Task batches: validation (each bad input names the field and the shapes), promotion of
ranks, masks, and the pytree helpers."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hbmeta import TaskBatch, concatenate_tasks, make_tasks


def _good(T=4, K=5, M=7, d=2):
    rng = np.random.default_rng(0)
    return dict(x_support=rng.normal(size=(T, K, d)), y_support=rng.normal(size=(T, K, 1)),
                x_query=rng.normal(size=(T, M, d)), y_query=rng.normal(size=(T, M, 1)))


def _make(**changes):
    fields = _good()
    masks = {k: changes.pop(k) for k in ("support_mask", "query_mask") if k in changes}
    fields.update(changes)
    return make_tasks(**fields, **masks)


def test_valid_batch_fields_and_dtypes():
    t = _make()
    assert isinstance(t, TaskBatch) and t.num_tasks == 4
    assert t.x_support.shape == (4, 5, 2) and t.y_query.shape == (4, 7, 1)
    assert t.x_support.dtype == jnp.float32 and t.support_mask is None
    np.testing.assert_allclose(t.x_query, _good()["x_query"].astype(np.float32))
    xs, ys, ms = t.support()
    assert xs is t.x_support and ys is t.y_support and ms is None
    assert t.query()[0] is t.x_query


def test_rank_two_inputs_and_targets_are_promoted():
    t = make_tasks(np.zeros((3, 4)), np.zeros((3, 4)), np.zeros((3, 6)), np.zeros((3, 6)))
    assert t.x_support.shape == (3, 4, 1) and t.y_support.shape == (3, 4, 1) and t.y_query.shape == (3, 6, 1)


def test_integer_labels_stay_rank_two():
    t = make_tasks(np.zeros((2, 5, 3)), np.arange(10).reshape(2, 5) % 5, np.zeros((2, 4, 3)),
                   np.zeros((2, 4), dtype=np.int64))
    assert t.y_support.shape == (2, 5) and t.y_support.dtype == jnp.int32
    assert t.y_query.dtype == jnp.int32


@pytest.mark.parametrize(
    "changes, pattern",
    [
        # mismatched leading sizes
        (dict(y_support=np.zeros((3, 5, 1))), "y_support has 3 tasks (shape (3, 5, 1)); expected 4 tasks"),
        (dict(x_query=np.zeros((5, 7, 2))), "x_query has 5 tasks (shape (5, 7, 2)); expected 4 tasks"),
        # point counts of targets vs inputs
        (dict(y_query=np.zeros((4, 6, 1))), "y_query has shape (4, 6, 1); expected 7 points per task"),
        # wrong ranks
        (dict(x_support=np.zeros((4, 5, 2, 1))), "x_support has shape (4, 5, 2, 1) (rank 4); expected rank 3"),
        (dict(x_query=np.zeros(4)), "x_query has shape (4,) (rank 1); expected rank 3"),
        (dict(y_support=np.zeros((4, 5, 1, 1))), "y_support has shape (4, 5, 1, 1) (rank 4); expected"),
        (dict(y_query=np.zeros(4)), "y_query has shape (4,) (rank 1); expected"),
        # features and target kinds disagree between support and query
        (dict(x_query=np.zeros((4, 7, 3))), "x_query has 3 features (shape (4, 7, 3)); expected 2"),
        (dict(y_query=np.zeros((4, 7, 2))), "y_query has shape (4, 7, 2); expected (4, 7, 1)"),
        # empty support set
        (dict(x_support=np.zeros((4, 0, 2)), y_support=np.zeros((4, 0, 1))),
         "x_support has shape (4, 0, 2): the support set is empty"),
        # masks of the wrong shape, or that leave no support point
        (dict(support_mask=np.ones((4, 6), bool)), "support_mask has shape (4, 6); expected (4, 5)"),
        (dict(query_mask=np.ones((7, 4), bool)), "query_mask has shape (7, 4); expected (4, 7)"),
        (dict(query_mask=np.ones(4, bool)), "query_mask has shape (4,); expected (4, 7)"),
        (dict(support_mask=np.full((4, 5), 2)), "support_mask has values other than 0/1"),
        (dict(support_mask=np.array([[True] * 5, [False] * 5, [True] * 5, [False] * 5])),
         "support_mask leaves tasks [1, 3] with an empty support set"),
        (dict(x_support=None), "x_support is None"),
    ],
)
def test_bad_input_raises_value_error_naming_field_and_shapes(changes, pattern):
    with pytest.raises(ValueError, match=re.escape(pattern)):
        _make(**changes)


@pytest.mark.parametrize("field", ["x_support", "y_support", "x_query", "y_query"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_raise(field, bad):
    a = _good()[field].copy()
    a[1, 2, 0] = bad
    with pytest.raises(ValueError, match=re.escape(f"{field} contains 1 NaN or infinite value(s)")):
        _make(**{field: a})


def test_zero_tasks_raise():
    with pytest.raises(ValueError, match="x_support has 0 tasks"):
        make_tasks(np.zeros((0, 5, 1)), np.zeros((0, 5, 1)), np.zeros((0, 3, 1)), np.zeros((0, 3, 1)))


def test_masks_are_booleans_and_zero_one_integers_are_accepted():
    m = np.ones((4, 5), dtype=np.int32)
    m[0, 3:] = 0
    t = _make(support_mask=m, query_mask=np.ones((4, 7), bool))
    assert t.support_mask.dtype == jnp.bool_ and t.query_mask.shape == (4, 7)
    np.testing.assert_array_equal(t.support_mask, m.astype(bool))


def test_take_concatenate_and_vmap():
    t = _make(support_mask=np.ones((4, 5), bool))
    sub = t.take(jnp.array([2, 0]))
    np.testing.assert_array_equal(sub.x_support[0], t.x_support[2])
    np.testing.assert_array_equal(sub.support_mask, t.support_mask[jnp.array([2, 0])])
    assert sub.query_mask is None
    both = concatenate_tasks([t.take(slice(0, 1)), t.take(slice(1, 4))])
    for a, b in zip(jax.tree.leaves(both), jax.tree.leaves(t)):
        np.testing.assert_array_equal(a, b)
    means = jax.vmap(lambda task: task.x_support.mean())(t)
    np.testing.assert_allclose(means, np.asarray(t.x_support).mean(axis=(1, 2)), rtol=1e-5)
    with pytest.raises(ValueError, match="batches is empty"):
        concatenate_tasks([])
