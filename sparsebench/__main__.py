"""``python -m sparsebench`` and the ``sparsebench`` console script.

Before Hydra composes anything, config-group choices on the command line are checked against
the yamls that exist, so a typo gets one sentence listing the valid names. Range errors in the
composed config are reported the same way (:func:`sparsebench.config.validate`).
"""

from __future__ import annotations

import importlib
import sys

import hydra
from omegaconf import DictConfig

from sparsebench.config import (
    CONF_DIR,
    ConfigError,
    register_configs,
    register_resolvers,
)
from sparsebench.logs import quiet_lightning

CHOICE_GROUPS = (
    "model",
    "dataset",
    "method",
    "hardware",
    "trainer",
    "logger",
    "paths",
    "experiment",
    "debug",
)


def available(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml") if not p.stem.startswith("_"))


def check_group_choices(args: list[str]) -> None:
    """Raise ConfigError for ``group=NAME`` overrides naming a yaml that does not exist."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    candidates = [a for a in args if "=" in a and not a.startswith("-")]
    if not candidates:
        return
    try:
        overrides = OverridesParser.create().parse_overrides(candidates)
    except Exception:
        return  # malformed overrides: Hydra reports them with its own message
    for override in overrides:
        group = override.key_or_group
        if group not in CHOICE_GROUPS or override.is_delete():
            continue
        values = (
            [str(v) for v in override.sweep_string_iterator()]
            if override.is_sweep_override()
            else [override.get_value_element_as_str()]
        )
        known = available(group)
        for value in values:
            if value not in known and value != "null":
                raise ConfigError(f"unknown {group} '{value}'; available: {', '.join(known)}.")


def _dispatch(cfg: DictConfig) -> None:
    quiet_lightning()
    runner = importlib.import_module(f"runners.{cfg.runner}")
    try:
        runner.run(cfg)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def main() -> None:
    if sys.argv[1:2] == ["upload"]:
        from sparsebench.tracking.upload import main as upload

        raise SystemExit(upload(sys.argv[2:]))
    if sys.argv[1:2] == ["leaderboard"]:
        from sparsebench.leaderboard import main as leaderboard

        raise SystemExit(leaderboard(sys.argv[2:]))
    register_configs()
    register_resolvers()
    try:
        check_group_choices(sys.argv[1:])
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(_dispatch)()


if __name__ == "__main__":
    main()
