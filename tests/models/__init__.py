"""Tests of sparsebench.models."""
