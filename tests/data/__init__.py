"""Tests of sparsebench.data."""
