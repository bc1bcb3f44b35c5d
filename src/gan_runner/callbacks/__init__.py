"""Callbacks: generator EMA, sample grids, checkpoints and plots, scheduled in generator steps."""
