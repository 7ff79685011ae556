"""One process of tests/test_distributed.py: ``python _distributed_worker.py PROCESS_ID NUM_PROCESSES PORT OUT``.

With NUM_PROCESSES = 1 it runs alone (no coordinator); otherwise it joins the others through a coordinator
on 127.0.0.1:PORT. Each process has 2 simulated CPU devices. Process 0 writes OUT/result.json: the
meta-loss and meta-gradient of tasks made global from each process's share, an SVI loss trajectory with
the tasks split over every process's devices, and (in OUT/run) a toy `linear` run with SVI over every device.
"""

import json
import os
import sys


def main(process_id: int, num_processes: int, port: int, out: str) -> None:
    import jax

    jax.config.update("jax_num_cpu_devices", 2)
    from hbmeta import distributed

    if num_processes > 1:
        distributed.initialize(f"127.0.0.1:{port}", num_processes, process_id, initialization_timeout=60)
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec

    import hbmeta as hb

    info = distributed.process_info()
    net = hb.mlp((1, 8, 1))
    theta = net.init(jax.random.key(0))
    rule = hb.GradientSteps(net.apply, step_size=0.05, num_steps=2)
    tasks = hb.Sinusoid().sample(jax.random.key(1), 8)  # every process can draw them; each keeps its share
    local = tasks.take(distributed.process_tasks(tasks.num_tasks))
    global_ = distributed.global_tasks(local)
    mesh = global_.x_support.sharding.mesh
    replicated = NamedSharding(mesh, PartitionSpec())
    value_and_grad = jax.jit(jax.value_and_grad(lambda p, t: hb.meta_loss(p, t, rule=rule)), out_shardings=replicated)
    loss, grad = value_and_grad(theta, global_)
    spec = hb.ModelSpec(rule, theta, likelihood=hb.NormalLikelihood(noise=0.5))
    post = hb.run_svi(spec, tasks, key=jax.random.key(2), num_steps=20, num_draws=5, progress=False,
                      devices=jax.devices())
    result = {"process_count": info.count, "num_devices": info.num_devices, "loss": float(loss),
              "grad": np.concatenate([np.ravel(np.asarray(g)) for g in jax.tree.leaves(grad)]).tolist(),
              "svi_losses": np.asarray(post.info["losses"]).tolist(), "local_tasks": local.num_tasks}
    # the whole job at toy size with the tasks over every device of every process; process 0 writes the run
    cfg = hb.load_config("linear", ["run.progress=false", "run.devices=0", "inference.method=svi"], toy=True)
    run = hb.run_pipeline(cfg, out=os.path.join(out, "run"), stream=open(os.devnull, "w"))
    result["run_path"] = run.path
    if distributed.is_main_process():
        with open(os.path.join(out, "result.json"), "w") as fh:
            json.dump(result, fh)
    if num_processes > 1:
        jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
