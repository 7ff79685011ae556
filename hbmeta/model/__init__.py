"""The hierarchical model: its specification, the NumPyro model, the posterior type and exact references."""
