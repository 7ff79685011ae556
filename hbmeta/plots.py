"""Plots of posteriors and predictives, written as PNG files (matplotlib is imported lazily).

- :func:`plot_trace`, :func:`plot_rank`: scalar sites and invariant functionals.
- :func:`plot_predictive_band`: predictive band per task with sampled adapted functions.
- :func:`plot_calibration`: observed frequency against confidence level (regression).
- :func:`plot_reliability`: reliability diagram (classification).
"""

from hbmeta._plots import plot_calibration, plot_predictive_band, plot_rank, plot_reliability, plot_trace

__all__ = ["plot_calibration", "plot_predictive_band", "plot_rank", "plot_reliability", "plot_trace"]
