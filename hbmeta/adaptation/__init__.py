"""Networks, losses and the gradient-step estimator φ̂ = θ − α∇L(S; θ)."""
