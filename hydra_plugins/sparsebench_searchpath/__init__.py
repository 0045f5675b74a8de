"""Hydra search-path plugin for sparsebench."""
