"""Command line (placeholder until the command-line issue lands): meta-train MAML on sinusoids."""

import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="hbmeta", description="Meta-train MAML on the sinusoid family.")
    parser.add_argument("--iterations", type=int, default=2000)
    args = parser.parse_args(argv)
    import jax

    import hbmeta as hb

    net = hb.mlp((1, 40, 40, 1))
    rule = hb.GradientSteps(net.apply, step_size=0.01)
    res = hb.train_maml(net.init(jax.random.key(0)), hb.Sinusoid(), rule=rule, key=jax.random.key(1),
                        num_iterations=args.iterations)
    ev = hb.evaluate(res.params, hb.Sinusoid(num_support=5).sample(jax.random.key(2), 600), rule=rule)
    for s in (1, 5, 10):
        m, c = ev.at(s)
        print(f"5-shot MSE after {s:2d} steps: {m:.3f} ± {c:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
