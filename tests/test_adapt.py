"""The gradient-step estimator: the implicit Gaussian prior of gradient steps (docs/references.md),
second-order and first-order meta-gradients, masks and padding, per-parameter step sizes, and
compile-once behaviour."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import hbmeta as hb
from hbmeta import GradientSteps, adapt, make_tasks, meta_loss


# --------------------------------------------------------------------------- quadratic identity
def _spd(rng, d, lo, hi):
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return q @ np.diag(np.linspace(lo, hi, d)) @ q.T


def _implicit_prior_map(H, phi_star, theta, alpha, n):
    """MAP of φ under N(θ, Σ), Σ = H⁻¹[(I − αH)⁻ⁿ − I], and likelihood exp(−½(φ−φ*)ᵀH(φ−φ*))."""
    d = H.shape[0]
    M = np.linalg.matrix_power(np.eye(d) - alpha * H, n)
    sigma = np.linalg.solve(H, np.linalg.inv(M) - np.eye(d))
    sigma_inv = np.linalg.inv(sigma)
    assert np.all(np.linalg.eigvalsh(0.5 * (sigma + sigma.T)) > 0)  # a proper Gaussian prior
    return np.linalg.solve(H + sigma_inv, H @ phi_star + sigma_inv @ theta)


@pytest.mark.parametrize("n", [1, 3, 7])
def test_quadratic_identity_custom_loss(x64, rng, n):
    d, alpha = 4, 0.2
    H = _spd(rng, d, 0.5, 3.0)  # 0 < αλ ≤ 0.6 < 1
    phi_star = rng.normal(size=d)
    theta = rng.normal(size=d)

    def loss(pred, y, mask):  # 0.5 (φ − φ*)ᵀ H (φ − φ*); apply is the identity
        r = pred - phi_star
        return 0.5 * r @ H @ r

    phi = adapt(jnp.asarray(theta), jnp.zeros((1, 1)), jnp.zeros((1, 1)),
                apply=lambda p, x: p, loss=loss, step_size=alpha, num_steps=n)
    closed = phi_star + np.linalg.matrix_power(np.eye(d) - alpha * H, n) @ (theta - phi_star)
    np.testing.assert_allclose(phi, closed, rtol=0, atol=1e-10)
    np.testing.assert_allclose(phi, _implicit_prior_map(H, phi_star, theta, alpha, n), rtol=0, atol=1e-8)
    # The identity is not trivially satisfied: φ_n moved from θ but has not reached φ*.
    assert np.linalg.norm(phi - theta) > 0.1 and np.linalg.norm(phi - phi_star) > 1e-3


@pytest.mark.parametrize("n", [1, 3, 7])
def test_quadratic_identity_linear_model_mse(x64, rng, n):
    """Linear model + MSE: H = (2/K) XᵀX and φ* the least-squares solution, vmapped over tasks under jit."""
    T, K, d, alpha = 3, 12, 3, 0.05
    X = rng.normal(size=(T, K, d))
    y = rng.normal(size=(T, K, 1))
    theta = rng.normal(size=d)
    rule = GradientSteps(hb.linear().apply, loss="mse", step_size=alpha, num_steps=n)
    tasks = make_tasks(X, y, X, y)
    phis = jax.jit(rule.adapt_tasks)({"w": jnp.asarray(theta)}, tasks)["w"]
    for j in range(T):
        H = 2.0 / K * X[j].T @ X[j]
        assert np.max(alpha * np.linalg.eigvalsh(H)) < 1
        phi_star = np.linalg.lstsq(X[j], y[j, :, 0], rcond=None)[0]
        closed = phi_star + np.linalg.matrix_power(np.eye(d) - alpha * H, n) @ (theta - phi_star)
        np.testing.assert_allclose(phis[j], closed, rtol=0, atol=1e-10)
        np.testing.assert_allclose(phis[j], _implicit_prior_map(H, phi_star, theta, alpha, n), rtol=0, atol=1e-8)


def test_per_parameter_step_sizes_quadratic(x64, rng):
    """Meta-SGD: a pytree of step sizes D gives φ* + (I − DH)ⁿ(θ − φ*)."""
    d, n = 3, 4
    H = _spd(rng, d, 0.5, 2.0)
    phi_star, theta = rng.normal(size=d), rng.normal(size=d)
    alphas = np.array([0.05, 0.2, 0.35])

    def loss(pred, y, mask):
        r = pred["v"] - phi_star
        return 0.5 * r @ H @ r

    phi = adapt({"v": jnp.asarray(theta)}, jnp.zeros((1, 1)), jnp.zeros((1, 1)), apply=lambda p, x: p, loss=loss,
                step_size={"v": jnp.asarray(alphas)}, num_steps=n)["v"]
    closed = phi_star + np.linalg.matrix_power(np.eye(d) - np.diag(alphas) @ H, n) @ (theta - phi_star)
    np.testing.assert_allclose(phi, closed, rtol=0, atol=1e-10)


def test_zero_steps_is_identity_and_negative_rejected():
    p = {"w": jnp.arange(3.0)}
    out = adapt(p, jnp.ones((4, 3)), jnp.ones((4, 1)), apply=hb.linear().apply, num_steps=0)
    np.testing.assert_array_equal(out["w"], p["w"])
    with pytest.raises(ValueError, match="num_steps=-1"):
        adapt(p, jnp.ones((4, 3)), jnp.ones((4, 1)), apply=hb.linear().apply, num_steps=-1)
    with pytest.raises(ValueError, match="num_steps"):
        GradientSteps(hb.linear().apply, num_steps=1.5)
    with pytest.raises(ValueError, match="step_size"):
        GradientSteps(hb.linear().apply, step_size=0.0)
    with pytest.raises(ValueError, match="loss='hinge'"):
        GradientSteps(hb.linear().apply, loss="hinge")


# --------------------------------------------------------------------------- meta-gradients
def _small_mlp_tasks(rng, T=3, K=6, M=5):
    net = hb.mlp((1, 5, 1), activation="tanh")
    theta = jax.tree.map(lambda a: a + 0.1, net.init(jax.random.key(0)))  # non-zero biases
    x = rng.uniform(-2, 2, size=(T, K + M, 1))
    y = np.sin(2 * x) + 0.3 * x
    return net, theta, make_tasks(x[:, :K], y[:, :K], x[:, K:], y[:, K:])


def test_second_order_meta_gradient_matches_finite_differences(x64, rng):
    """∇ of the meta-loss w.r.t. θ and a per-parameter step-size pytree (Meta-SGD), two inner steps,
    against central differences in every coordinate. (One step is checked exactly below.)"""
    net, theta, tasks = _small_mlp_tasks(rng)
    rule = GradientSteps(net.apply, step_size=0.3, num_steps=2)
    alphas = jax.tree.map(lambda a: 0.2 + 0.05 * jnp.arange(a.size).reshape(a.shape) / a.size, theta)
    f = jax.jit(lambda z: meta_loss(z[0], tasks, rule=rule, step_size=z[1]))
    flat, unravel = ravel_pytree((theta, alphas))
    flat = np.asarray(flat)
    g = np.asarray(ravel_pytree(jax.jit(jax.grad(f))((theta, alphas)))[0])
    eps, eye = 1e-6, np.eye(flat.size)
    fd = np.array([(float(f(unravel(flat + eps * eye[i]))) - float(f(unravel(flat - eps * eye[i])))) / (2 * eps)
                   for i in range(flat.size)])  # 32 coordinates: 16 weights, 16 step sizes
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-9)
    assert np.all(np.abs(fd[16:]) > 0)  # the step sizes do influence the meta-loss


def test_first_order_drops_exactly_the_second_order_term(x64, rng):
    """Linear model, one step: φ̂ = Aθ + b, full = Aᵀ∇L_q(φ̂), first-order = ∇L_q(φ̂)."""
    K, M, d, alpha = 7, 9, 3, 0.1
    Xs, Xq = rng.normal(size=(1, K, d)), rng.normal(size=(1, M, d))
    ys, yq = rng.normal(size=(1, K, 1)), rng.normal(size=(1, M, 1))
    tasks = make_tasks(Xs, ys, Xq, yq)
    theta = rng.normal(size=d)
    A = np.eye(d) - 2 * alpha / K * Xs[0].T @ Xs[0]
    b = 2 * alpha / K * Xs[0].T @ ys[0, :, 0]
    phi = A @ theta + b
    grad_q = -2.0 / M * Xq[0].T @ (yq[0, :, 0] - Xq[0] @ phi)
    apply = hb.linear().apply
    full, first = jax.jit(lambda p: [
        jax.grad(meta_loss)(p, tasks, rule=GradientSteps(apply, step_size=alpha, first_order=fo))["w"]
        for fo in (False, True)])({"w": jnp.asarray(theta)})
    np.testing.assert_allclose(full, A.T @ grad_q, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(first, grad_q, rtol=1e-10, atol=1e-12)
    assert np.linalg.norm(full - first) > 1e-2 * np.linalg.norm(first)  # the term dropped is not negligible


def test_first_order_multi_step_is_query_gradient_at_adapted_params(x64, rng):
    net, theta, tasks = _small_mlp_tasks(rng)
    rule = GradientSteps(net.apply, step_size=0.3, num_steps=3, first_order=True)
    full_rule = GradientSteps(net.apply, step_size=0.3, num_steps=3)

    @jax.jit
    def grads(p):
        first_order = jax.grad(lambda q: meta_loss(q, tasks, rule=rule))(p)
        phis = rule.adapt_tasks(p, tasks)
        per_task = jax.vmap(jax.grad(lambda q, x, y: hb.mse(net.apply(q, x), y)))(phis, tasks.x_query, tasks.y_query)
        full = jax.grad(lambda q: meta_loss(q, tasks, rule=full_rule))(p)
        return first_order, per_task, full

    g, per_task, full = jax.tree.map(np.asarray, grads(theta))
    expected = jax.tree.map(lambda a: a.mean(axis=0), per_task)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    diff = np.asarray(ravel_pytree(full)[0]) - np.asarray(ravel_pytree(g)[0])
    assert np.linalg.norm(diff) > 1e-3


# --------------------------------------------------------------------------- masks and padding
def _ragged(rng, sizes, M_sizes, d=1):
    return ([rng.normal(size=(k, d)) for k in sizes], [rng.normal(size=(k, 1)) for k in sizes],
            [rng.normal(size=(m, d)) for m in M_sizes], [rng.normal(size=(m, 1)) for m in M_sizes])


def _pad(arrs, width, garbage):
    out = np.full((len(arrs), width) + arrs[0].shape[1:], garbage)
    mask = np.zeros((len(arrs), width), bool)
    for j, a in enumerate(arrs):
        out[j, : len(a)] = a
        mask[j, : len(a)] = True
    return out, mask


def test_padded_tasks_match_unpadded(rng):
    net = hb.mlp((1, 8, 1), activation="tanh")
    theta = net.init(jax.random.key(1))
    rule = GradientSteps(net.apply, step_size=0.1, num_steps=2)
    xs, ys, xq, yq = _ragged(rng, [3, 5], [4, 2])
    Xs, ms = _pad(xs, 8, 37.0)
    Ys, _ = _pad(ys, 8, -91.0)
    Xq, mq = _pad(xq, 6, 55.0)
    Yq, _ = _pad(yq, 6, 1e3)
    padded = make_tasks(Xs, Ys, Xq, Yq, support_mask=ms, query_mask=mq)

    losses_and_grad = jax.jit(lambda p, t: (rule.query_losses(p, t), jax.grad(meta_loss)(p, t, rule=rule)))
    losses, grad_padded = jax.tree.map(np.asarray, losses_and_grad(theta, padded))
    singles, grads = [], []
    for j in range(2):
        loss, grad = jax.tree.map(np.asarray, losses_and_grad(
            theta, make_tasks(xs[j][None], ys[j][None], xq[j][None], yq[j][None])))
        singles.append(loss[0])
        grads.append(grad)
    np.testing.assert_allclose(losses, singles, rtol=1e-5)
    mean_grad = jax.tree.map(lambda *g: sum(g) / 2, *grads)
    for a, b in zip(jax.tree.leaves(grad_padded), jax.tree.leaves(mean_grad)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_padded_classification_matches_unpadded(rng):
    net = hb.mlp((2, 6, 3))
    theta = net.init(jax.random.key(2))
    rule = GradientSteps(net.apply, loss="cross_entropy", step_size=0.5, num_steps=2)
    xs, ys = rng.normal(size=(1, 3, 2)), rng.integers(0, 3, size=(1, 3))
    xq, yq = rng.normal(size=(1, 5, 2)), rng.integers(0, 3, size=(1, 5))
    Xs = np.concatenate([xs, np.full((1, 3, 2), 40.0)], axis=1)
    Ys = np.concatenate([ys, np.full((1, 3), 2)], axis=1)  # garbage labels that are still valid classes
    ms = np.arange(6)[None] < 3
    Xq = np.concatenate([xq, np.full((1, 2, 2), -7.0)], axis=1)
    Yq = np.concatenate([yq, np.zeros((1, 2), int)], axis=1)
    mq = np.arange(7)[None] < 5
    padded = make_tasks(Xs, Ys, Xq, Yq, support_mask=ms, query_mask=mq)
    loss_and_grad = jax.jit(jax.value_and_grad(lambda p, t: meta_loss(p, t, rule=rule)))
    loss, g = jax.tree.map(np.asarray, loss_and_grad(theta, padded))
    loss_1, g_1 = jax.tree.map(np.asarray, loss_and_grad(theta, make_tasks(xs, ys, xq, yq)))
    np.testing.assert_allclose(loss, loss_1, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_1)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- compile once
def test_meta_gradient_and_update_do_not_retrace(rng):
    import optax

    traces = {"n": 0}
    net = hb.mlp((1, 4, 1))

    def apply(p, x):
        traces["n"] += 1  # runs only while tracing
        return net.apply(p, x)

    rule = GradientSteps(apply, step_size=0.01, num_steps=2)
    grad_fn = jax.jit(jax.grad(lambda p, t: meta_loss(p, t, rule=rule)))
    theta = net.init(jax.random.key(0))
    fam = hb.Sinusoid(num_support=4, num_query=3)
    grad_fn(theta, fam.sample(jax.random.key(1), 5))
    first = traces["n"]
    assert first > 0
    grad_fn(jax.tree.map(lambda a: a + 1.0, theta), fam.sample(jax.random.key(2), 5))
    assert traces["n"] == first
    assert grad_fn._cache_size() == 1

    opt = optax.adam(1e-3)
    update = jax.jit(lambda s, t: hb.maml_update(s, t, rule=rule, optimizer=opt))
    state = hb.init_maml(theta, optimizer=opt, step_size=0.01, key=jax.random.key(0))
    state, _ = update(state, fam.sample(jax.random.key(3), 5))
    after_first = traces["n"]
    state, info = update(state, fam.sample(jax.random.key(4), 5))
    assert traces["n"] == after_first and update._cache_size() == 1
    assert int(state.iteration) == 2 and np.isfinite(float(info.loss))
