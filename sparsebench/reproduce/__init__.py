"""Claims of the sparse-training literature checked by one command (``python -m
sparsebench.reproduce``): claim files, paired statistics over seeds, verdicts and a report."""
