"""Tuning: sweeps over settings (grid, random, Optuna), each trial a run folder, and the search spaces."""
