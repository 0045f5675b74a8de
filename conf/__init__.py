"""The Hydra config tree, installed as the package ``sparsebench.conf`` (its yamls are package data)."""
