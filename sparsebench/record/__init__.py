"""The write side of a run: results.json, run identity, MLflow, upload, resume and the parent
runs of sweeps (docs/records.md)."""
