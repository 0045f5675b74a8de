"""Sweep definitions (Optuna studies, multirun grids, claims), installed as ``sparsebench.sweeps``."""
