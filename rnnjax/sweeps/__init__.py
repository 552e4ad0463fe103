"""Sweeps: a grid of configs (grid), running its trials (sweep) and reading their results back
(sweep_summary)."""
