"""``python -m sparsebench.search sweep=NAME``: a search worker (see sparsebench.search.worker).

python -m sparsebench.search sweep=tpe_mlp                        # one worker
python -m sparsebench.search sweep=tpe_mlp workers=4              # 4 local processes
python -m sparsebench.search sweep=tpe_mlp storage=postgresql://user@db:5432/optuna
python -m sparsebench.search -m sweep=tpe_mlp worker=0,1,2,3 hydra/launcher=submitit_slurm
"""

from __future__ import annotations

import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from sparsebench.config.checks import check_composition
from sparsebench.config.compose import hydra_app, register
from sparsebench.errors import ConfigError
from sparsebench.record.logs import quiet_lightning


def sweep_required() -> str:
    from sparsebench.config.resources import available_sweeps

    return (
        f"sweep= is required: a study in sweeps/ ({', '.join(available_sweeps())}) or the "
        "path of a study yaml."
    )


def _main(cfg: DictConfig) -> None:
    from sparsebench.config.checks import validate
    from sparsebench.search.spec import load_spec
    from sparsebench.search.storage import open_storage
    from sparsebench.search.worker import Worker, check_space, spawn_workers

    quiet_lightning()
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        if OmegaConf.is_missing(cfg, "sweep"):
            raise ConfigError(sweep_required())
        validate(cfg)
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
    register()

    def check(args: list[str]) -> None:
        if not any(a.startswith(("sweep=", "--help", "--hydra-help", "-h")) for a in args):
            raise ConfigError(sweep_required())
        check_composition(args, "search")

    hydra_app("search", _main, check)


if __name__ == "__main__":
    main()
