"""Tests of sparsebench.metrics."""
