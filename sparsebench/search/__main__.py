"""``python -m sparsebench.search sweep=NAME``: a search worker (see sparsebench.search.worker).

python -m sparsebench.search sweep=tpe_mlp                        # one worker
python -m sparsebench.search sweep=tpe_mlp workers=4              # 4 local processes
python -m sparsebench.search sweep=tpe_mlp storage=postgresql://user@db:5432/optuna
python -m sparsebench.search -m sweep=tpe_mlp worker=0,1,2,3 hydra/launcher=submitit_slurm
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from sparsebench.config import CONF_DIR, ConfigError, register_configs, register_resolvers
from sparsebench.logs import quiet_lightning


def _main(cfg: DictConfig) -> None:
    from sparsebench.search.spec import load_spec
    from sparsebench.search.storage import open_storage
    from sparsebench.search.worker import Worker, check_space, spawn_workers

    quiet_lightning()
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        spec = load_spec(cfg.sweep, cfg.get("n_trials"), cfg.get("storage"))
        if spec.baseline:  # the random-search baseline's comparison (sparsebench.search.baseline)
            from sparsebench.search.baseline import Baseline

            Baseline(cfg, output_dir, spec).run()
            return
        if int(cfg.workers) > 1:  # check once here: bad input is one sentence, not N
            check_space(spec, [str(o) for o in cfg.get("trial_overrides") or []])
            open_storage(spec.storage)
            raise SystemExit(1 if spawn_workers(output_dir, int(cfg.workers)) else 0)
        worker = Worker(cfg, output_dir)
        worker.run()
        worker.report()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def main() -> None:
    register_configs()
    register_resolvers()
    hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="search")(_main)()


if __name__ == "__main__":
    main()
