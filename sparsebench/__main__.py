"""``python -m sparsebench`` and the ``sparsebench`` console script.

Before Hydra composes anything, config-group choices on the command line are checked against
the yamls that exist, so a typo gets one sentence listing the valid names. Range errors in the
composed config are reported the same way (:func:`sparsebench.config.validate`).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from omegaconf import DictConfig

from sparsebench.config.checks import check_composition, check_group_choices, validate
from sparsebench.config.compose import hydra_app, normalize_overrides, register
from sparsebench.config.schemas import RUNNERS
from sparsebench.errors import ConfigError, ContractIncomplete, RunDiverged, RunInterrupted
from sparsebench.record.logs import quiet_lightning


def _dispatch(cfg: DictConfig, resume: bool = False) -> None:
    quiet_lightning()
    try:
        if cfg.get("runner") not in RUNNERS:  # before importing a module named by the user
            raise ConfigError(
                f"runner must be one of {', '.join(RUNNERS)}, got '{cfg.get('runner')}'."
            )
        if not resume:
            validate(cfg)  # before Lightning and torch are imported: errors in about a second
        runner = importlib.import_module(f"sparsebench.runners.{cfg.runner}")
        runner.run(cfg, resume=resume)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except RunInterrupted as exc:  # recorded as interrupted; exit as the signal would
        print(
            f"interrupted: {exc}; results in {cfg.paths.output_dir}. Continue it with: "
            f"python -m sparsebench resume={cfg.paths.output_dir}",
            file=sys.stderr,
        )
        raise SystemExit(128 + exc.signum) from None
    except (RunDiverged, ContractIncomplete) as exc:  # recorded as diverged / failed
        word = "diverged" if isinstance(exc, RunDiverged) else "failed"
        print(f"{word}: {exc}; results in {cfg.paths.output_dir}.", file=sys.stderr)
        raise SystemExit(1) from None


def resume(args: list[str]) -> None:
    """``python -m sparsebench resume=RUN_DIR``: continue an unfinished run with its own saved
    config, in its folder and its MLflow run (sparsebench.record.resume)."""
    from omegaconf import OmegaConf, open_dict

    from sparsebench.record.resume import resume_point

    given = [a for a in args if a.startswith("resume=")]
    others = [a for a in args if not a.startswith("resume=")]
    try:
        if len(given) > 1 or others:
            raise ConfigError(
                f"resume= takes no other arguments (the run continues with its "
                f"saved config); got {' '.join(given[1:] + others)}."
            )
        run_dir = Path(given[0].removeprefix("resume=")).expanduser()
        if not run_dir.is_dir():
            raise ConfigError(f"resume={run_dir}: no such run folder.")
        resume_point(run_dir, explicit=True)
        cfg = OmegaConf.load(run_dir / "config.yaml")  # plain YAML: nothing is executed
        with open_dict(cfg):
            cfg.paths.output_dir = str(run_dir)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    _dispatch(cfg, resume=True)


def main() -> None:
    if sys.argv[1:2] == ["upload"]:
        from sparsebench.record.upload import main as upload

        raise SystemExit(upload(sys.argv[2:]))
    if sys.argv[1:2] == ["leaderboard"]:
        from sparsebench.leaderboard.cli import main as leaderboard

        raise SystemExit(leaderboard(sys.argv[2:]))
    sys.argv[1:] = normalize_overrides(sys.argv[1:])  # before Hydra reads them
    register()
    if any(a.startswith("resume=") for a in sys.argv[1:]):
        resume(sys.argv[1:])  # the run's saved config: composed before, nothing to compose
        return

    def check(args: list[str]) -> None:
        check_group_choices(args)
        check_composition(args, "config")

    hydra_app("config", _dispatch, check)


if __name__ == "__main__":
    main()
