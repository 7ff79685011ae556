"""MAML meta-training and fine-tuning evaluation of a point estimate θ."""
