"""Sparsity: which weights are prunable, masks, patterns, distributions, schedules and methods."""
