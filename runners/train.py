"""Train runner: compose, instantiate, fit, test, measure, report. All logic is in the library."""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L
from omegaconf import DictConfig

from sparsebench.config import validate
from sparsebench.models import build_model
from sparsebench.tracking.recorder import RunRecorder
from sparsebench.training import (
    ResultsCallback,
    build_datamodule,
    build_hardware,
    build_method,
    build_module,
    build_trainer,
    fit,
    measure,
)


def run(
    cfg: DictConfig,
    callbacks: list[L.Callback] | None = None,
    tags: dict[str, str] | None = None,
    started: float | None = None,
) -> dict[str, float]:
    """Train ``cfg``'s model on its dataset and write the results contract; returns the metrics.

    For a search trial run in-process: ``callbacks`` join the Trainer's (the pruning callback),
    ``tags`` join the run's (study, trial number), ``started`` (time.time()) replaces the
    process start for ``time/startup_s``."""
    validate(cfg)
    output_dir = Path(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg)
    model = build_model(cfg.model)
    hardware = build_hardware(cfg)
    method = build_method(cfg)
    hardware.check(method.pattern if method else None, method.name if method else "dense")

    with RunRecorder(cfg, output_dir, {**hardware.fingerprint(), **(tags or {})}) as record:
        results = record.results
        if method is not None:  # DASS searches; Sparse-IFT and DASS train another model
            method.prepare(datamodule, cfg)
            model = method.transform_model(model, cfg.model, datamodule.example_input(1))
            extra = method.extra_results()
            results.data.update(extra)
            results.update(method.extra_metrics())
            for key, value in extra.items():  # e.g. genotype.json
                path = output_dir / f"{key}.json"
                path.write_text(json.dumps(value, indent=1, default=str))
                record.artifacts.append(path)
        if method is not None and method.description:
            results.data["transform"] = method.description
            record.lines += method.description
        progress = ResultsCallback(results, started)
        callbacks = [*([] if method is None else [method]), progress, *(callbacks or [])]
        module = build_module(cfg, model)
        start = time.perf_counter()
        trainer = fit(module, datamodule, method,
                      lambda **kw: build_trainer(cfg, output_dir, record.logger, callbacks, **kw))  # fmt: skip
        results.update({"time/train_s": time.perf_counter() - start,
                        "train/samples": progress.samples_seen})  # fmt: skip
        results.update({k: v for k, v in trainer.callback_metrics.items() if k.startswith("val/")})
        (test,) = trainer.test(module, datamodule=datamodule, verbose=False)
        results.update(test)

        measure(results, cfg, model, datamodule.example_input(1), progress.samples_seen, method,
                hardware, benchmark=record.is_zero)  # fmt: skip
    return results.metrics
