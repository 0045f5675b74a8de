"""Train runner: compose, instantiate, fit, test, measure, report. All logic is in the library."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
from omegaconf import DictConfig, OmegaConf

from sparsebench.config import validate
from sparsebench.models import build_model
from sparsebench.summary import print_summary
from sparsebench.tracking.identity import flatten
from sparsebench.tracking.mlflow_logging import make_logger
from sparsebench.tracking.results import Results
from sparsebench.training import (
    ResultsCallback,
    build_datamodule,
    build_hardware,
    build_module,
    build_trainer,
    check_method,
    model_metrics,
    size_metrics,
)

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, float]:
    """Train ``cfg``'s model on its dataset and write the results contract; returns the metrics."""
    validate(cfg)
    check_method(cfg)
    output_dir = Path(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg)
    model = build_model(cfg.model)
    hardware = build_hardware(cfg)

    results = Results(output_dir, cfg)
    results.update(tags=hardware.fingerprint())
    logger, problem = make_logger(cfg, results.tags)
    notes = []
    if problem:
        notes.append(f"MLflow: {problem}; results are kept in {results.path}.")
    error: BaseException | None = None
    try:
        tracker = ResultsCallback(results)
        trainer = build_trainer(cfg, output_dir, logger, [tracker])
        module = build_module(cfg, model)
        start = time.perf_counter()
        trainer.fit(module, datamodule=datamodule)
        results.update({"time/train_s": time.perf_counter() - start})
        results.update({k: v for k, v in trainer.callback_metrics.items() if k.startswith("val/")})
        (test,) = trainer.test(module, datamodule=datamodule, verbose=False)
        results.update(test)

        example = datamodule.example_input(1)
        metrics = model_metrics(cfg, model, example)
        metrics["flops/train"] = (
            3 * metrics["flops/dense"] * tracker.samples_seen
        )  # dense: 3 f_D per sample
        metrics["speedup/theoretical"] = metrics["flops/dense"] / metrics["flops/sparse"]
        metrics.update(size_metrics(model))
        results.update(metrics)
        if hardware.enabled:
            results.update(hardware.benchmark(model, example), tags={"latency/estimated": "false"})
    except BaseException as exc:
        error = exc
        raise
    finally:
        results.finish(error)
        if logger is not None:
            OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)
            params = flatten(results.data["config"])
            logger.log_final(
                results.metrics, params, results.tags, [results.path, output_dir / "config.yaml"]
            )
            logger.finalize("failed" if error else "success")
            if logger.failure:
                notes.append(f"{logger.failure}; results are kept in {results.path}.")
            else:
                results.data["mlflow"] = {
                    "tracking_uri": logger._tracking_uri,
                    "run_id": logger.run_id,
                }
                results.save()
        if notes and not (logger and not logger.failure):
            notes.append(
                f"Send them to a tracking server later with: sparsebench upload {output_dir}"
            )
        if error is None and cfg.print_summary:
            print_summary(results.metrics, results.tags, notes)
        elif notes:
            for note in notes:
                log.warning(note)
    return results.metrics
