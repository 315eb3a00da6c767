"""Sweeps: Ray Tune over training runs, ranked by the probe."""
