"""Yardsticks on real data: the fixed-recipe classifier, the probe that scores refined images
during training and ranks sweeps, and the pictures (grids, curves, error bars)."""
