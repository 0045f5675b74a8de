"""Tests of sparsebench.sparsity."""
