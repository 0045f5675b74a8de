"""Tests of sparsebench.search."""
