"""Tasks sharded over 2 simulated CPU devices give the same meta-gradient as on one device.

The trap of docs/references.md (the software stack): a gradient taken inside shard_map with
respect to a replicated θ sums the inner gradients across devices, mixing tasks. hbmeta shards the task
axis and lets jit partition the vmapped computation; these tests would catch a mixed-up inner step, since the
tasks on the two devices have very different inner gradients.
"""

import jax
import numpy as np
import pytest

import hbmeta as hb
from hbmeta import GradientSteps, meta_loss, shard_tasks


def test_two_simulated_devices():
    assert jax.device_count() == 2


def test_sharded_meta_gradient_equals_single_device():
    net = hb.mlp((1, 16, 1))
    theta = net.init(jax.random.key(0))
    rule = GradientSteps(net.apply, step_size=0.05, num_steps=2)
    tasks = hb.Sinusoid().sample(jax.random.key(1), 8)
    sharded = shard_tasks(tasks)
    assert sharded.x_support.sharding.device_set == set(jax.devices())
    assert sharded.x_support.addressable_shards[0].data.shape == (4, 10, 1)

    value_and_grad = jax.jit(jax.value_and_grad(lambda p, t: meta_loss(p, t, rule=rule)))
    loss_1, grad_1 = jax.tree.map(np.asarray, value_and_grad(theta, tasks))
    loss_2, grad_2 = jax.tree.map(np.asarray, value_and_grad(theta, sharded))
    np.testing.assert_allclose(loss_2, loss_1, rtol=1e-6)
    flat_1 = np.concatenate([g.ravel() for g in jax.tree.leaves(grad_1)])
    flat_2 = np.concatenate([g.ravel() for g in jax.tree.leaves(grad_2)])
    assert np.linalg.norm(flat_2 - flat_1) <= 1e-6 * np.linalg.norm(flat_1)
    # The tasks on the two devices pull θ differently (the first four tasks twice give another
    # meta-gradient), so mixing the inner steps of tasks would show.
    half = jax.tree.map(np.asarray, value_and_grad(theta, tasks.take(np.array([0, 1, 2, 3] * 2)))[1])
    flat_half = np.concatenate([g.ravel() for g in jax.tree.leaves(half)])
    assert np.linalg.norm(flat_half - flat_1) > 0.1 * np.linalg.norm(flat_1)


def test_shard_tasks_keeps_masks_and_checks_the_task_count():
    tasks = hb.make_tasks(np.zeros((4, 3, 1)), np.zeros((4, 3, 1)), np.zeros((4, 2, 1)), np.zeros((4, 2, 1)),
                          support_mask=np.ones((4, 3), bool))
    sharded = shard_tasks(tasks)
    assert sharded.support_mask.sharding.device_set == set(jax.devices()) and sharded.query_mask is None
    np.testing.assert_array_equal(sharded.support_mask, tasks.support_mask)
    one = shard_tasks(tasks, devices=jax.devices()[:1])
    assert one.x_query.sharding.device_set == {jax.devices()[0]}
    with pytest.raises(ValueError, match="tasks has 3 tasks; expected a multiple of the 2 devices"):
        shard_tasks(tasks.take(slice(0, 3)))


def test_task_mesh_axis_is_auto():
    mesh = hb.task_mesh()
    assert mesh.axis_names == ("tasks",) and mesh.devices.size == 2
    assert mesh.axis_types == (jax.sharding.AxisType.Auto,)
