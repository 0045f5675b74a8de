"""Tests of sparsebench.hardware."""
