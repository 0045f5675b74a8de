"""Tests of sparsebench.training."""
