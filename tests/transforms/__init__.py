"""Tests of sparsebench.transforms."""
