"""Where NUTS/HMC chains start in ``hbmeta run``: the members of an ensemble trained for the purpose.

With ``inference.nuts.members = M`` the chains start at M MAML solutions
trained together under ``vmap`` on all the training tasks (each from its own
random initialisation; the ``[inference.ensemble]`` iterations and meta-batch,
the ``[maml]`` optimiser), ``num_chains / M`` chains each: one superchain per
mode, diagnosed per mode (:mod:`hbmeta.diagnostics.modes`). The members only
give the starting points (and, with ``subspace = "last_layer"``, the hidden
layers each chain holds); their σ is their training residual's, a start that
the chains then sample.
"""

from __future__ import annotations

from dataclasses import replace

from hbmeta.base.checkpoint import Checkpointer
from hbmeta.inference.ensemble import ensemble_train_size, run_ensemble
from hbmeta.run import build as _build


def member_starts(eff, objects, spec, tasks, *, key, input_dim=None, progress=True, checkpoint_path=None):
    """The ensemble (a :class:`~hbmeta.Posterior`, one chain per member) whose members start the chains."""
    nuts, ens = eff.inference.nuts, eff.inference.ensemble
    settings = _build.method_settings(eff, "ensemble")
    every = eff.run.checkpoint_every
    return run_ensemble(
        replace(spec, task_posterior=None), tasks, key=key, num_members=nuts.members,
        init=lambda k: _build.initial_params(eff, objects.network, k, input_dim=input_dim),
        num_iterations=ens.num_iterations,
        meta_batch_size=min(ens.meta_batch_size, ensemble_train_size(tasks.num_tasks, nuts.members, "none")),
        optimizer=settings["optimizer"], holdout="none", tails=False, member_devices=settings["member_devices"],
        chunk_size=min(1000, every or 1000), progress=progress,
        checkpoint=Checkpointer(checkpoint_path, every_steps=every) if every and checkpoint_path else None,
    )
