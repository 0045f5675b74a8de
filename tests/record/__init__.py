"""Tests of sparsebench.record."""
