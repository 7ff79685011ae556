"""Tasks from long-format tables: splits, padding and masks, standardisation, one-hot encoding, errors."""

import json

import numpy as np
import pandas as pd
import pytest

import hbmeta as hb
from hbmeta.tasks.table import Standardization, split_groups, tasks_from_table


def _table(rng, sizes=(4, 7, 5, 9)):
    rows = []
    for g, n in zip("abcd", sizes):
        for i in range(n):
            rows.append({"group": g, "t": float(n - i), "u": rng.normal(), "colour": ["red", "blue"][i % 2],
                         "y": rng.normal(3.0, 2.0), "is_support": i < 2})
    return pd.DataFrame(rows)



def test_one_task_per_group_with_masks_rows_and_standardised_values(rng):
    df = _table(rng)
    data = tasks_from_table(df, task="group", x=["t", "u"], y="y", split="random", num_support=3, seed=1)
    t = data.tasks
    assert data.groups.tolist() == ["a", "b", "c", "d"]
    assert t.x_support.shape == (4, 3, 2) and t.x_query.shape == (4, 6, 2) and t.y_query.shape == (4, 6, 1)
    assert np.asarray(t.query_mask).sum(axis=1).tolist() == [1, 4, 2, 6]
    assert np.asarray(t.support_mask).all()
    # every row of each group is used exactly once, in support or query, and only rows of that group
    for j, g in enumerate(data.groups):
        rows = np.concatenate([data.support_rows[j], data.query_rows[j]])
        rows = np.sort(rows[rows >= 0])
        assert rows.tolist() == np.flatnonzero(df.group == g).tolist()
    # values: (v − mean) / sd with the table's mean and population sd; padding is zero
    mx, sx = df[["t", "u"]].mean().to_numpy(), df[["t", "u"]].std(ddof=0).to_numpy()
    my, sy = df.y.mean(), df.y.std(ddof=0)
    r = data.support_rows[2, 1]
    np.testing.assert_allclose(np.asarray(t.x_support[2, 1]), (df.loc[r, ["t", "u"]].to_numpy(float) - mx) / sx,
                               rtol=1e-5)
    np.testing.assert_allclose(float(t.y_support[2, 1, 0]), (df.y[r] - my) / sy, rtol=1e-5)
    assert np.all(np.asarray(t.x_query)[~np.asarray(t.query_mask)] == 0)
    np.testing.assert_allclose(data.scaler.y_to_original(np.asarray(t.y_support)[..., 0]),
                               df.y.to_numpy()[data.support_rows], rtol=1e-5)


def test_random_split_is_seeded_and_order_split_takes_the_first_rows(rng):
    df = _table(rng)
    kw = dict(task="group", x=["t"], y="y", num_support=2)
    a = tasks_from_table(df, split="random", seed=3, **kw)
    b = tasks_from_table(df, split="random", seed=3, **kw)
    c = tasks_from_table(df, split="random", seed=4, **kw)
    assert np.array_equal(a.support_rows, b.support_rows)
    assert not np.array_equal(a.support_rows, c.support_rows)
    first = tasks_from_table(df, split="order", **kw)
    sorted_t = tasks_from_table(df, split="order", order_by="t", **kw)
    for j, g in enumerate(first.groups):
        rows = np.flatnonzero(df.group == g)
        assert first.support_rows[j].tolist() == rows[:2].tolist()  # table order
        assert sorted_t.support_rows[j].tolist() == rows[::-1][:2].tolist()  # t decreases within a group
        assert first.query_rows[j][first.query_rows[j] >= 0].tolist() == rows[2:].tolist()


def test_split_by_column_gives_ragged_support_sets(rng):
    df = _table(rng)
    df.loc[df.index[df.group == "d"][:4], "is_support"] = True  # group d: 4 support rows
    data = tasks_from_table(df, task="group", x="t", y="y", split="is_support", num_query=3)
    t = data.tasks
    assert t.x_support.shape == (4, 4, 1)
    assert np.asarray(t.support_mask).sum(axis=1).tolist() == [2, 2, 2, 4]
    assert np.asarray(t.query_mask).sum(axis=1).tolist() == [2, 3, 3, 3]  # at most num_query
    assert df.is_support.to_numpy()[data.support_rows[data.support_rows >= 0]].all()
    assert not df.is_support.to_numpy()[data.query_rows[data.query_rows >= 0]].any()


def test_held_out_groups_use_the_training_standardisation(rng):
    df = _table(rng, sizes=(5, 6, 7, 8))
    train_df, test_df = split_groups(df, task="group", num_test=1, seed=0)
    assert set(train_df.group).isdisjoint(test_df.group) and len(set(test_df.group)) == 1
    train = tasks_from_table(train_df, task="group", x=["u"], y="y", num_support=2)
    test = tasks_from_table(test_df, task="group", x=["u"], y="y", num_support=2, scaler=train.scaler)
    assert test.scaler is train.scaler
    r = test.support_rows[0, 0]
    expected = (test_df.y[r] - train_df.y.mean()) / train_df.y.std(ddof=0)
    np.testing.assert_allclose(float(test.tasks.y_support[0, 0, 0]), expected, rtol=1e-5)
    # and differs from what a scaler fitted on the held-out group would give
    own = tasks_from_table(test_df, task="group", x=["u"], y="y", num_support=2)
    assert abs(float(own.tasks.y_support[0, 0, 0]) - expected) > 1e-3


def test_categorical_inputs_are_one_hot_and_unseen_levels_are_an_error(rng):
    df = _table(rng)
    data = tasks_from_table(df, task="group", x=["colour", "t"], y="y", num_support=2, categorical=["colour"])
    s = data.scaler
    assert s.features == ("colour=blue", "colour=red", "t")
    x = np.asarray(data.tasks.x_support)[np.asarray(data.tasks.support_mask)]
    assert set(np.unique(x[:, :2])) <= {0.0, 1.0} and np.all(x[:, :2].sum(axis=1) == 1)
    colours = df.colour.to_numpy()[data.support_rows.ravel()]
    assert np.array_equal(x[:, 1] == 1, colours == "red")
    # a pandas category column is encoded without being listed
    cat = df.assign(colour=df.colour.astype("category"))
    assert tasks_from_table(cat, task="group", x=["colour"], y="y", num_support=2).scaler.features[:2] == s.features[:2]
    with pytest.raises(ValueError, match=r"column 'colour' has level\(s\) \['green'\] not seen"):
        s.encode(df.assign(colour="green"))


def test_csv_and_parquet_files_give_the_same_tasks(rng, tmp_path):
    df = _table(rng)
    df.to_csv(tmp_path / "t.csv", index=False)
    df.to_parquet(tmp_path / "t.parquet")
    kw = dict(task="group", x=["t", "u"], y="y", num_support=2, seed=5)
    ref = tasks_from_table(df, **kw)
    for path in (tmp_path / "t.csv", str(tmp_path / "t.parquet")):
        got = tasks_from_table(path, **kw)
        for a, b in zip(ref.tasks, got.tasks):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
        assert got.groups.tolist() == ref.groups.tolist()


def test_the_standardisation_record_round_trips_through_json(rng):
    df = _table(rng)
    s = Standardization.fit(df, x=["colour", "u"], y="y", categorical=["colour"])
    back = Standardization.from_dict(json.loads(json.dumps(s.to_dict())))
    assert back == s
    np.testing.assert_array_equal(back.encode(df), s.encode(df))
    with pytest.raises(ValueError, match="standardisation record is incomplete"):
        Standardization.from_dict({"x_columns": ["u"]})


def test_metrics_in_original_units_match_metrics_computed_in_original_units(rng):
    """NLL gains log(sd_y), MSE scales by sd_y², coverage is unchanged: checked against direct computation."""
    df = _table(rng)
    s = Standardization.fit(df, x=["u"], y="y")
    mean = rng.normal(size=(1, 3, 10, 1)).astype(np.float32)
    noise = np.array([[0.5, 0.8, 1.1]], np.float32)
    y = rng.normal(size=(10, 1)).astype(np.float32)
    std = {"mse": float(hb.predictive_mse(mean, y)), "nll": float(hb.mixture_nll(mean, noise, y)),
           "coverage_90": float(hb.coverage(mean, noise, y, level=0.9))}
    orig_mean, orig_noise, orig_y = s.y_to_original(mean), s.sd_to_original(noise), s.y_to_original(y)
    direct = {"mse": float(hb.predictive_mse(orig_mean, orig_y)),
              "nll": float(hb.mixture_nll(orig_mean, orig_noise, orig_y)),
              "coverage_90": float(hb.coverage(orig_mean, orig_noise, orig_y, level=0.9))}
    converted = s.metrics_to_original(std)
    for k in direct:
        np.testing.assert_allclose(converted[k], direct[k], rtol=1e-3, atol=1e-4)


def test_small_tasks_are_an_error_or_dropped(rng):
    df = _table(rng)
    message = r"^task 'a' \(column 'group'\) has 4 rows; expected at least num_support \+ 1 = 5"
    with pytest.raises(ValueError, match=message):
        tasks_from_table(df, task="group", x=["t"], y="y", num_support=4)
    data = tasks_from_table(df, task="group", x=["t"], y="y", num_support=4, small_tasks="drop")
    assert data.dropped == ("a",) and data.groups.tolist() == ["b", "c", "d"]


@pytest.mark.parametrize("change, kwargs, message", [
    (None, {"x": ["nope"]}, r"column 'nope' \(input x\) is not in the table; its columns are \['group'"),
    (None, {"task": "missing"}, r"column 'missing' \(task\) is not in the table"),
    (None, {"y": "absent"}, r"column 'absent' \(target y\) is not in the table"),
    ("text", {}, r"column 't' has non-numeric values \(e.g. 'n/a' in row 3\); expected numbers, or list the column"),
    ("nan_y", {}, r"column 'y' has NaN or infinite values in task 'b' \(row 5\); expected finite numbers"),
    ("nan_x", {}, r"column 't' has NaN or infinite values in task 'a' \(row 1\)"),
    (None, {"split": "sometimes"}, r"split='sometimes' is neither 'random' nor 'order' nor a column"),
    (None, {"split": "colour"}, r"column 'colour' \(split\) has values \['blue', 'red'\]; expected booleans"),
    (None, {"num_support": 0}, r"num_support=0; expected a positive integer K"),
    (None, {"num_support": None}, r"num_support=None; expected a positive integer K for split='random'"),
    (None, {"x": ["y"]}, r"expected three different roles"),
    (None, {"categorical": ["u"]}, r"categorical=\['u'\]: 'u' is not one of the x columns"),
])
def test_bad_tables_give_one_line_errors_naming_the_column_or_task(rng, change, kwargs, message):
    df = _table(rng)
    if change == "text":
        df["t"] = df["t"].astype(object)
        df.loc[3, "t"] = "n/a"
    elif change == "nan_y":
        df.loc[5, "y"] = np.nan
    elif change == "nan_x":
        df.loc[1, "t"] = np.nan
    args = dict(task="group", x=["t"], y="y", num_support=2) | kwargs
    with pytest.raises(ValueError, match=message) as err:
        tasks_from_table(df, **args)
    assert "\n" not in str(err.value)


def test_file_errors(tmp_path):
    with pytest.raises(ValueError, match=r"table file '.*nothing.csv' does not exist"):
        tasks_from_table(tmp_path / "nothing.csv", task="g", x=["x"], y="y", num_support=1)
    (tmp_path / "t.xlsx").write_text("x")
    with pytest.raises(ValueError, match=r"has extension '.xlsx'; expected .csv or .parquet"):
        tasks_from_table(tmp_path / "t.xlsx", task="g", x=["x"], y="y", num_support=1)
    with pytest.raises(ValueError, match=r"table is a list; expected a pandas DataFrame"):
        tasks_from_table([1, 2], task="g", x=["x"], y="y", num_support=1)


def test_split_groups_is_seeded_and_checks_its_size():
    df = pd.DataFrame({"g": np.repeat(np.arange(10), 3), "v": np.arange(30)})
    a = split_groups(df, task="g", num_test=3, seed=7)[1]
    b = split_groups(df, task="g", num_test=3, seed=7)[1]
    c = split_groups(df, task="g", num_test=3, seed=8)[1]
    assert a.equals(b) and set(a.g) != set(c.g) and a.g.nunique() == 3
    with pytest.raises(ValueError, match=r"num_test=10; expected an integer in \[1, 9\]"):
        split_groups(df, task="g", num_test=10)


def test_tasks_train_maml_and_predict_with_masks(rng):
    """The padded, masked table tasks go through MAML and the predictive; masked points come back NaN."""
    import jax

    df = _table(rng)
    data = tasks_from_table(df, task="group", x=["t", "u"], y="y", num_support=2)
    net = hb.mlp((2, 8, 1))
    rule = hb.GradientSteps(net.apply, step_size=0.05)
    res = hb.train_maml(net.init(jax.random.key(0)), data.tasks, rule=rule, key=jax.random.key(1),
                        num_iterations=5, meta_batch_size=2, progress=False)
    spec = hb.ModelSpec(rule, res.params)
    pred = hb.sample_predictive(hb.maml_posterior(spec, res.params, data.tasks), data.tasks, key=jax.random.key(2))
    mask = np.asarray(data.tasks.query_mask)
    assert np.isnan(pred.mean[0, 0][~mask]).all() and np.isfinite(pred.mean[0, 0][mask]).all()
