"""The scale c of the blobs ensemble's logit variance, chosen on the folds (issue 9). Development draws only.

For classification ``holdout_task_scale`` fits each member's τ_m by type-II
maximum likelihood on the tasks it left out. Mixed over M members, those
τ_m give an under-confident predictive, so every τ_m² is multiplied by the c
of ``CLASS_SCALES`` with the lowest Brier score of the M-member mixture,
estimated on the folds (:func:`hbmeta.inference.class_scale.mixture_brier`). This
script trains the default blobs ensemble (3-way 2-shot, 2–40–40–3 ReLU,
|T| = 100, 8 members, held-out folds) on development draws (``DEV_SEED`` of
``calibration_gap.py`` plus 100 plus the draw: never a reported result), and
for each c in ``SCALES`` (every member's own τ_m² multiplied by c) scores

- on the training folds: the log-likelihood per query point of the mixture of
  the members that left each task out, plain and with the logit spread that
  its two or three members lack against M added to every member's logit
  variance (``+v``, the regression fallback's correction, in logit space),
  the plain folds' ECE, and the estimated M-member Brier score (the library's
  rule; the c it chooses is marked);
- on 600 held-out tasks (30 query points each, 18,000 points): the mixture's
  NLL, ECE (15 bins), its mean confidence minus its accuracy (negative:
  under-confident) and its Brier score.

Usage:
    python bench/blobs_confidence.py              # 2 draws, about 100 s a draw on 2 cores
    python bench/blobs_confidence.py --draws 4
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np

import hbmeta as hb
from hbmeta.inference.class_scale import mixture_brier
from hbmeta.inference.holdout import holdout_task_scale, out_of_sample_mask
from hbmeta.model.task_linearised import mean_field_probs
from hbmeta.predict.metrics import expected_calibration_error

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from calibration import maml_optimizer, setups
from calibration_gap import DEV_SEED

SCALES = (0.0, 0.25, 0.5, 0.7, 1.0, 2.0, 4.0)


def label_loglik(probs, y):
    return float(np.mean(np.log(np.take_along_axis(probs, y[..., None], -1)[..., 0] + 1e-12)))


def ece(probs, y):
    return float(expected_calibration_error(jnp.asarray(probs[None, None]), jnp.asarray(y)))


def member_logit_gap(mu, out):
    """v: half the mean squared gap of two out-of-sample members' mean logits, over tasks, pairs and logits."""
    gaps = [np.mean((mu[a, j] - mu[b, j]) ** 2) / 2
            for j in range(out.shape[1]) for i, a in enumerate(np.flatnonzero(out[:, j]))
            for b in np.flatnonzero(out[:, j])[i + 1:]]
    return float(np.mean(gaps))


def train_blobs(draw: int, members: int = 8):
    """The default blobs ensemble on development draw ``draw``: ``(spec_task, train, held, θ (M, P), holdout index)``."""
    st = setups()["blobs"]
    k_train, k_init, k_fit, k_held = jax.random.split(jax.random.key(DEV_SEED + 100 + draw), 4)
    train = st.family.fixed(k_train, 100).tasks
    held = st.family.with_points(num_query=st.eval_query).sample(k_held, 600)
    net = hb.mlp(st.sizes)
    spec = hb.ModelSpec(hb.GradientSteps(net.apply, loss=st.loss, step_size=st.alpha), net.init(k_init),
                        likelihood=hb.CategoricalLikelihood())
    ens = hb.run_ensemble(spec, train, key=k_fit, num_members=members, init=net.init,
                          num_iterations=st.maml_iterations, meta_batch_size=min(25, 100 - 2 * -(-100 // members)),
                          optimizer=maml_optimizer(), progress=False)
    return (replace(spec, task_posterior=hb.TaskPosterior()), train, held, np.asarray(ens.samples["theta"][:, 0]),
            np.asarray(ens.info["holdout_index"]))


def draw_rows(draw: int, members: int = 8):
    spec_task, train, held, theta, index = train_blobs(draw, members)
    own = holdout_task_scale(spec_task, theta, train, index, class_scales=(1.0,))  # each member's own τ_m
    chosen = holdout_task_scale(spec_task, theta, train, index).scale  # what run_ensemble now uses
    out = out_of_sample_mask(index, members, 100)
    n_out = out.sum(0)
    w = out[:, :, None, None] / n_out[None, :, None, None]
    y_train, y_held = np.asarray(train.y_query), np.asarray(held.y_query)
    rows = []
    for c in SCALES:
        tau = np.maximum(np.sqrt(c) * np.asarray(own.tau), 1e-6)
        on_train = [hb.task_predictive(spec_task, jnp.asarray(theta[m]), train, tau=float(tau[m]))
                    for m in range(members)]
        mu = np.stack([np.asarray(p.mean) for p in on_train])
        var = np.stack([np.asarray(p.var) for p in on_train])
        members_p = np.stack([np.asarray(p.probs) for p in on_train])
        plain = (members_p * w).sum(0)
        v = member_logit_gap(mu, out)
        add = (v * (1 / n_out - 1 / members))[None, :, None, None]
        spread = np.asarray(mean_field_probs(jnp.asarray(mu), jnp.asarray(var + add)[..., None] * jnp.eye(mu.shape[-1])))
        spread = (spread * w).sum(0)
        held_p = np.mean([np.asarray(hb.task_predictive(spec_task, jnp.asarray(theta[m]), held, tau=float(tau[m])).probs)
                          for m in range(members)], axis=0)
        conf_gap = float(held_p.max(-1).mean() - (held_p.argmax(-1) == y_held).mean())
        held_brier = float(np.mean(np.sum((np.eye(held_p.shape[-1])[y_held] - held_p) ** 2, -1)))
        rows.append((c, label_loglik(plain, y_train), label_loglik(spread, y_train), ece(plain, y_train),
                     -label_loglik(held_p, y_held), ece(held_p, y_held), conf_gap,
                     -mixture_brier(members_p, y_train, out, np.ones(y_train.shape)), held_brier))
    return rows, chosen


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=2, help="development draws 0 … N − 1")
    args = ap.parse_args(argv)
    print("| draw | c | folds' log-lik. | folds' log-lik. +v | folds' ECE | folds' Brier of M members | held-out NLL | "
          "held-out ECE | confidence − accuracy | held-out Brier |\n|---|---|---|---|---|---|---|---|---|---|")
    for draw in range(args.draws):
        rows, chosen = draw_rows(draw)
        plain, spread = (max(rows, key=lambda r, k=k: r[k])[0] for k in (1, 2))
        for r in rows:
            mark = " (folds)" * (r[0] == plain) + " (folds +v)" * (r[0] == spread) + " (Brier: chosen)" * (r[0] == chosen)
            print(f"| {draw} | {r[0]:g}{mark} | {r[1]:.4f} | {r[2]:.4f} | {r[3]:.4f} | {-r[7]:.4f} | {r[4]:.4f} | "
                  f"{r[5]:.4f} | {r[6]:+.4f} | {r[8]:.4f} |", flush=True)


if __name__ == "__main__":
    main()
