"""Metadata the schemas' fields carry."""

NO_HASH = {"hash": False}  # cannot change results: left out of the run hash
OURS = {"trainer": False}  # not an argument of Lightning's Trainer
