"""Tests of sparsebench.pruning."""
