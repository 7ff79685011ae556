"""Posterior-predictive sampling of adapted models, its summaries and the uncertainty metrics."""
