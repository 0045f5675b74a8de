"""Structured-config schemas of a run (the model families' are in :mod:`sparsebench.config.models`),
registered in Hydra's ConfigStore.

Each config group's yaml starts from one of these schemas (``defaults: [schema_name]``), so a
wrong type or an unknown key fails while Hydra composes the config. Ranges (``max_epochs >= 1``,
``lr > 0`` ...) are checked in each schema's ``__post_init__`` when the config is validated
(:func:`sparsebench.config.checks.validate`), before anything is built or trained: every check
raises :class:`ConfigError` with one sentence naming the bad value and what is allowed. Nothing
here asks the machine (how many GPUs or cores it has): a saved config validates on any host, and
the run checks the machine where it starts (:func:`sparsebench.training.machine.check_machine`).

Fields carrying ``metadata={"hash": False}`` do not change results (workers, progress bars,
logging cadence) and are left out of the run hash (see :mod:`sparsebench.record.identity`).
Fields carrying ``metadata={"trainer": False}`` are sparsebench's own training options; every
other field of :class:`TrainerConfig` is an argument of the Lightning ``Trainer`` its
``_target_`` names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from sparsebench.config.fields import NO_HASH, OURS
from sparsebench.config.models import MODEL_SCHEMAS, DenseMethodConfig
from sparsebench.config.store import parse_store
from sparsebench.config.text import HubTextDatasetConfig, TextDatasetConfig
from sparsebench.errors import ConfigError, require


@dataclass
class DatasetConfig:
    """A LightningDataModule and the shape of its samples.

    ``input_shape`` is (C, H, W) for images and (C, L) for 1-D signals; models take
    ``num_classes``, ``in_chans`` and the input size from here.
    """

    _target_: str = MISSING
    name: str = MISSING
    task: str = "classification"  # what the models learn; text datasets: TextDatasetConfig
    num_classes: int = MISSING
    input_shape: list[int] = MISSING
    batch_size: int = 64
    eval_batch_size: int = 256
    val_fraction: float = 0.1
    test_fraction: float = 0.2  # in-memory sets without a published test split
    split_seed: int = 0
    num_samples: int | None = None  # synthetic / mnist1d
    data_dir: str | None = field(default=None, metadata=NO_HASH)
    download: bool = field(default=False, metadata=NO_HASH)
    verify_checksums: bool = field(default=True, metadata=NO_HASH)
    augment: bool = False
    num_workers: int = field(default=0, metadata=NO_HASH)

    def __post_init__(self) -> None:
        require(
            self.task == "classification",
            f"dataset.task of an image or signal dataset is classification, got '{self.task}'.",
        )
        require(self.batch_size >= 1, f"dataset.batch_size must be >= 1, got {self.batch_size}.")
        require(
            self.eval_batch_size >= 1,
            f"dataset.eval_batch_size must be >= 1, got {self.eval_batch_size}.",
        )
        require(
            0 < self.val_fraction < 1,
            f"dataset.val_fraction must be in (0, 1), got {self.val_fraction}.",
        )
        require(
            0 < self.test_fraction < 1,
            f"dataset.test_fraction must be in (0, 1), got {self.test_fraction}.",
        )
        require(
            self.val_fraction + self.test_fraction < 1,
            "dataset.val_fraction + dataset.test_fraction must be < 1, "
            f"got {self.val_fraction} + {self.test_fraction}.",
        )
        require(self.num_classes >= 2, f"dataset.num_classes must be >= 2, got {self.num_classes}.")
        require(
            len(self.input_shape) in (2, 3) and all(d >= 1 for d in self.input_shape),
            f"dataset.input_shape must be [C, L] or [C, H, W] of positive sizes, got {list(self.input_shape)}.",
        )
        if self.num_samples is not None:
            require(
                self.num_samples >= 10,
                f"dataset.num_samples must be >= 10, got {self.num_samples}.",
            )
        require(self.num_workers >= 0, f"dataset.num_workers must be >= 0, got {self.num_workers}.")


TASKS = ("classification", "language_modeling")


def task_of(cfg: Any) -> str:
    """A config's task, its dataset's (configs saved before tasks existed: classification)."""
    return str(cfg.dataset.get("task") or "classification")


@dataclass
class OptimizerConfig:
    """A ``torch.optim`` class, built with ``_partial_`` and given the parameters later.

    The fields are the union of the options of the optimizers in conf/; ``None`` ones are
    not passed, so SGD never sees ``betas`` and AdamW never sees ``momentum``.
    """

    _target_: str = "torch.optim.SGD"
    _partial_: bool = True
    lr: float = 0.1
    weight_decay: float = 5e-4
    momentum: float | None = None
    nesterov: bool | None = None
    betas: list[float] | None = None

    def __post_init__(self) -> None:
        require(self.lr > 0, f"trainer.optimizer.lr must be > 0, got {self.lr}.")
        require(
            self.weight_decay >= 0,
            f"trainer.optimizer.weight_decay must be >= 0, got {self.weight_decay}.",
        )
        if self.momentum is not None:
            require(
                0 <= self.momentum < 1,
                f"trainer.optimizer.momentum must be in [0, 1), got {self.momentum}.",
            )


SCHEDULERS = ("cosine", "constant", "step")


@dataclass
class TrainerConfig:
    """The training budget: the Lightning ``Trainer`` that ``_target_`` names, built from every
    field without ``metadata=OURS`` (lightning-hydra-template's way), and sparsebench's own
    options (the optimizer, its schedule, the divergence guard)."""

    _target_: str = "lightning.pytorch.Trainer"
    max_epochs: int = 10
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig, metadata=OURS)
    scheduler: str = field(default="cosine", metadata=OURS)
    warmup_epochs: int = field(default=0, metadata=OURS)
    warmup_steps: int = field(default=0, metadata=OURS)  # instead of warmup_epochs (LMs)
    # How masked layers train (sparsebench.hardware.training): off, on, or auto (timed per layer).
    # It changes how a step is computed, not what: not hashed.
    sparse_kernels: str = field(default="off", metadata={**NO_HASH, **OURS})
    accelerator: str = "auto"
    devices: Any = 1
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    gradient_clip_val: float | None = None
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    deterministic: bool = False
    enable_progress_bar: bool = field(default=True, metadata=NO_HASH)
    log_every_n_steps: int = field(default=10, metadata=NO_HASH)
    enable_checkpointing: bool = field(default=True, metadata=NO_HASH)
    # Divergence guard: a non-finite training loss, or one above max_loss (null: no limit),
    # ends the run as `diverged` at that step.
    max_loss: float | None = field(default=1.0e4, metadata={**NO_HASH, **OURS})
    # Extra Lightning callbacks, each a node with _target_ (e.g. EarlyStopping).
    callbacks: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        require(self.max_epochs >= 1, f"trainer.max_epochs must be >= 1, got {self.max_epochs}.")
        require(
            self.max_loss is None or self.max_loss > 0,
            f"trainer.max_loss must be > 0 or null, got {self.max_loss}.",
        )
        require(
            self.scheduler in SCHEDULERS,
            f"trainer.scheduler must be one of {', '.join(SCHEDULERS)}, got '{self.scheduler}'.",
        )
        require(
            0 <= self.warmup_epochs < self.max_epochs,
            f"trainer.warmup_epochs must be in [0, max_epochs), got {self.warmup_epochs}.",
        )
        require(
            self.warmup_steps >= 0 and not (self.warmup_steps and self.warmup_epochs),
            f"trainer.warmup_steps must be >= 0 and not set with warmup_epochs, got "
            f"{self.warmup_steps} (warmup_epochs={self.warmup_epochs}).",
        )
        require(
            self.sparse_kernels in SPARSE_KERNELS,
            f"trainer.sparse_kernels must be one of {', '.join(SPARSE_KERNELS)}, got "
            f"'{self.sparse_kernels}'.",
        )
        require(self.num_nodes >= 1, f"trainer.num_nodes must be >= 1, got {self.num_nodes}.")
        require(
            self.accelerator in ACCELERATORS,
            f"trainer.accelerator must be one of {', '.join(ACCELERATORS)}, got '{self.accelerator}'.",
        )
        require(
            str(self.precision) in PRECISIONS,
            f"trainer.precision must be one of {', '.join(PRECISIONS)}, got '{self.precision}'.",
        )
        device_count(self.devices)
        for name in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
            _check_limit(f"trainer.{name}", getattr(self, name))
        if self.gradient_clip_val is not None:
            require(
                self.gradient_clip_val > 0,
                f"trainer.gradient_clip_val must be > 0, got {self.gradient_clip_val}.",
            )


ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "auto")
SPARSE_KERNELS = ("off", "on", "auto")


PRECISIONS = (
    "64-true",
    "64",
    "32-true",
    "32",
    "16-mixed",
    "16",
    "bf16-mixed",
    "bf16",
    "16-true",
    "bf16-true",
)


def device_count(devices: Any) -> int | None:
    """How many devices ``trainer.devices`` asks for (None: ``auto`` or -1, all there are); a
    count, ``auto``, -1 or a list of indices. How many the machine has is checked where the run
    starts (:func:`sparsebench.training.machine.check_machine`)."""
    if devices in ("auto", -1, "-1"):
        return None
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        count = len(devices)
    else:
        try:
            count = int(str(devices))
        except ValueError:
            raise ConfigError(
                f"trainer.devices must be a number, a list of indices or 'auto', got '{devices}'."
            ) from None
    require(count >= 1, f"trainer.devices must be >= 1, got {devices}.")
    return count


def _check_limit(name: str, value: Any) -> None:
    """Lightning's limit_*: a fraction in [0, 1] or a whole number of batches >= 0."""
    if value is None:
        return
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{name} must be a fraction in [0, 1] or a batch count, got '{value}'."
        ) from None
    whole = isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit())
    ok = number >= 0 and (whole or number <= 1.0) and number == number
    require(ok, f"{name} must be a fraction in [0, 1] or a batch count >= 0, got {value}.")


@dataclass
class LoggerConfig:
    """MLflow tracking. ``tracking_uri`` None means ``$MLFLOW_TRACKING_URI`` or sqlite:///mlflow.db."""

    enabled: bool = True
    tracking_uri: str | None = None
    experiment_name: str = "sparsebench"
    run_name: str | None = None
    connect_timeout_s: float = 5.0
    # CPU, memory and GPU use sampled into the run (MLflow's system metrics monitor).
    log_system_metrics: bool = False
    # The final model as an MLflow logged model (pt2: torch.export's graph and weights).
    log_model: bool = False

    def __post_init__(self) -> None:
        require(
            0 < self.connect_timeout_s <= 600,
            f"logger.connect_timeout_s must be in (0, 600], got {self.connect_timeout_s}.",
        )
        require(
            0 < len(self.experiment_name) <= 250,
            f"logger.experiment_name must have 1 to 250 characters, got {len(self.experiment_name)}.",
        )
        if self.tracking_uri is not None:
            parse_store(self.tracking_uri, "logger.tracking_uri")


@dataclass
class PathsConfig:
    output_dir: str = "${hydra:runtime.output_dir}"
    data_dir: str = "${oc.env:SPARSEBENCH_DATA_DIR,data}"


@dataclass
class SparsebenchConfig:
    """The whole resolved config of one run."""

    model: Any = MISSING  # a family's schema (MODEL_SCHEMAS)
    dataset: Any = MISSING  # DatasetConfig, or TextDatasetConfig for language models
    method: Any = None  # absent: dense training; ``+method=NAME`` adds one
    transform: Any = None  # absent: the model as configured; ``+transform=NAME`` transforms it
    hardware: Any = MISSING  # the target class's schema (sparsebench.config.targets)
    trainer: TrainerConfig = MISSING
    logger: LoggerConfig = MISSING
    paths: PathsConfig = MISSING
    runner: str = "train"  # train | prune (post-training pruning of a trained model)
    checkpoint: str | None = None  # runner=prune: a run folder or .ckpt of the trained model
    seed: int = 0
    tags: dict[str, str] = field(default_factory=dict)
    print_summary: bool = True

    def __post_init__(self) -> None:
        require(self.seed >= 0, f"seed must be >= 0, got {self.seed}.")
        require(
            self.runner in RUNNERS,
            f"runner must be one of {', '.join(RUNNERS)}, got '{self.runner}'.",
        )


RUNNERS = ("train", "prune")

SCHEMAS: dict[str, type] = {
    "dataset": DatasetConfig,
    "text_dataset": TextDatasetConfig,
    "hub_text_dataset": HubTextDatasetConfig,
    "trainer": TrainerConfig,
    "logger": LoggerConfig,
    "paths": PathsConfig,
}


def register_schemas() -> None:
    """Store the run's schemas; group yamls name them in their defaults list."""
    cs = ConfigStore.instance()
    cs.store(name="sparsebench_schema", node=SparsebenchConfig)
    for group, schema in SCHEMAS.items():
        cs.store(group="schema", name=group, node=schema)
    for family, schema in MODEL_SCHEMAS.items():
        cs.store(group="schema/model", name=family, node=schema)
    cs.store(group="schema/method", name="dense", node=DenseMethodConfig)


def trainer_arguments(trainer: Any) -> list[str]:
    """The keys of a trainer node that are arguments of its ``_target_`` (the schema marks the
    others)."""
    ours = {f.name for f in dataclasses.fields(TrainerConfig) if f.metadata.get("trainer") is False}
    return [key for key in trainer if key not in ours and key != "_target_"]
