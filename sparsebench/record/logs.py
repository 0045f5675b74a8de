"""Console logging: Lightning's lines once each, without its advertisement."""

from __future__ import annotations

import logging
import warnings


class _DropTips(logging.Filter):
    """Drops Lightning's advertisement for its cloud logger (we log to MLflow)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def quiet_lightning() -> None:
    """Lightning prints through its own handler on "lightning"; Hydra's root one would repeat it."""
    logging.getLogger("lightning").propagate = False
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropTips())
    warnings.filterwarnings("ignore", message=".*treespec, LeafSpec.*")
