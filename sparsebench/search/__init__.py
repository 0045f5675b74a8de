"""Search over sparse configurations with Optuna: study definitions (``sweeps/NAME.yaml``),
storages, the search worker, the random-search baseline and DASS."""
