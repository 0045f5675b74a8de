"""Run identity, results.json and MLflow logging."""
