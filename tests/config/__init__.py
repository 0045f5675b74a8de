"""Tests of sparsebench.config."""
