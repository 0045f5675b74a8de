"""Tests of sparsebench.reproduce."""
