"""Metrics of the results contract: parameters, sparsity, FLOPs, storage size."""
