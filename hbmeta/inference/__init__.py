"""Inference methods over θ (one module each), their shared opening and closing steps, the registry and the dispatcher."""
