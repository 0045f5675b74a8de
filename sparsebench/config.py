"""Structured-config schemas, registered in Hydra's ConfigStore.

Each config group's yaml starts from one of these schemas (``defaults: [schema_name]``), so a
wrong type or an unknown key fails while Hydra composes the config. Ranges (``max_epochs >= 1``,
``lr > 0`` ...) are checked by :func:`validate`, before anything is built or trained: every
check raises :class:`ConfigError` with one sentence naming the bad value and what is allowed.

Fields carrying ``metadata={"hash": False}`` do not change results (workers, progress bars,
logging cadence) and are left out of the run hash (see :mod:`sparsebench.tracking.identity`).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

# Shipped inside the package (a link to the repository's conf/ in a checkout).
CONF_DIR = Path(str(importlib.resources.files("sparsebench") / "conf"))
"""The Hydra config tree: conf/ at the repository top level (docs/architecture.md)."""
SWEEPS_DIR = Path(str(importlib.resources.files("sparsebench") / "sweeps"))
"""Sweep definitions; on Hydra's search path through hydra_plugins/sparsebench_searchpath."""

NO_HASH = {"hash": False}


def available_sweeps() -> list[str]:
    """The studies shipped in sweeps/ (``sweep=NAME``)."""
    return sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml"))


class ConfigError(ValueError):
    """A config value is invalid; the message is one sentence for the user."""


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (its type's name when it has none), at most
    ``limit`` characters: how a library's multi-line error becomes part of one sentence."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass
class ModelConfig:
    """Arguments of ``timm.create_model`` that every model family takes (our small models
    register with timm too); each family's schema adds its own options, so a run's params hold
    only the options of its model. Options default to None: timm drops None keyword arguments.
    """

    _target_: str = "timm.create_model"
    model_name: str = MISSING
    pretrained: bool = False
    num_classes: int = MISSING
    in_chans: int = MISSING

    def __post_init__(self) -> None:
        _require(self.num_classes >= 2, f"model.num_classes must be >= 2, got {self.num_classes}.")
        _require(self.in_chans >= 1, f"model.in_chans must be >= 1, got {self.in_chans}.")
        drop_rate = getattr(self, "drop_rate", None)
        if drop_rate is not None:
            _require(0 <= drop_rate < 1, f"model.drop_rate must be in [0, 1), got {drop_rate}.")


@dataclass
class TimmModelConfig(ModelConfig):
    """timm's own networks (resnet18, mobilenetv2_100, vit_tiny_patch16_224, ...). The common
    ``create_model`` arguments are typed here; any other a network takes passes through to timm
    (``+model.KEY=VALUE``), which refuses in one sentence what the network does not take."""

    img_size: Any = None  # vision transformers: int or [H, W]
    drop_rate: float | None = None
    drop_path_rate: float | None = None
    drop_block_rate: float | None = None
    global_pool: str | None = None  # avg, max, avgmax, catavgmax, '' (none)

    OPEN = True  # not a field: keys beyond these are timm keyword arguments


@dataclass
class MLPConfig(ModelConfig):
    """sparsebench.models.small.MLP."""

    in_features: int | None = None  # C*H*W or C*L of the dataset
    hidden_dims: list[int] | None = None
    drop_rate: float | None = None


@dataclass
class CifarResNetConfig(ModelConfig):
    """sparsebench.models.small.CifarResNet (resnet20)."""

    width: int | None = None  # base width


@dataclass
class DassNetworkConfig(ModelConfig):
    """A network of DASS's search space (sparsebench.models.dass)."""

    channels: int | None = None  # channels of the first cells
    cells: int | None = None
    nodes: int | None = None  # intermediate nodes per cell
    genotype: Any = None  # a searched genotype (mapping or JSON string)


MODEL_SCHEMAS: dict[str, type] = {"timm": TimmModelConfig, "mlp": MLPConfig,
                                  "resnet20": CifarResNetConfig, "dass_network": DassNetworkConfig}  # fmt: skip


@dataclass
class DenseMethodConfig:
    """No sparsity method (``+method=dense``), or a preset whose model transformation is the
    whole structure (``+method=monarch``)."""

    _target_: Any = None
    name: str = MISSING
    sparsity: float | None = None  # dense: 0


@dataclass
class DatasetConfig:
    """A LightningDataModule and the shape of its samples.

    ``input_shape`` is (C, H, W) for images and (C, L) for 1-D signals; models take
    ``num_classes``, ``in_chans`` and the input size from here.
    """

    _target_: str = MISSING
    name: str = MISSING
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
        _require(self.batch_size >= 1, f"dataset.batch_size must be >= 1, got {self.batch_size}.")
        _require(
            self.eval_batch_size >= 1,
            f"dataset.eval_batch_size must be >= 1, got {self.eval_batch_size}.",
        )
        _require(
            0 < self.val_fraction < 1,
            f"dataset.val_fraction must be in (0, 1), got {self.val_fraction}.",
        )
        _require(
            0 < self.test_fraction < 1,
            f"dataset.test_fraction must be in (0, 1), got {self.test_fraction}.",
        )
        _require(
            self.val_fraction + self.test_fraction < 1,
            "dataset.val_fraction + dataset.test_fraction must be < 1, "
            f"got {self.val_fraction} + {self.test_fraction}.",
        )
        _require(
            self.num_classes >= 2, f"dataset.num_classes must be >= 2, got {self.num_classes}."
        )
        _require(
            len(self.input_shape) in (2, 3) and all(d >= 1 for d in self.input_shape),
            f"dataset.input_shape must be [C, L] or [C, H, W] of positive sizes, got {list(self.input_shape)}.",
        )
        if self.num_samples is not None:
            _require(
                self.num_samples >= 10,
                f"dataset.num_samples must be >= 10, got {self.num_samples}.",
            )
        _require(
            self.num_workers >= 0, f"dataset.num_workers must be >= 0, got {self.num_workers}."
        )


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
        _require(self.lr > 0, f"trainer.optimizer.lr must be > 0, got {self.lr}.")
        _require(
            self.weight_decay >= 0,
            f"trainer.optimizer.weight_decay must be >= 0, got {self.weight_decay}.",
        )
        if self.momentum is not None:
            _require(
                0 <= self.momentum < 1,
                f"trainer.optimizer.momentum must be in [0, 1), got {self.momentum}.",
            )


SCHEDULERS = ("cosine", "constant", "step")


@dataclass
class TrainerConfig:
    """The training budget and the Lightning ``Trainer`` options sparsebench exposes."""

    max_epochs: int = 10
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: str = "cosine"
    warmup_epochs: int = 0
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
    max_loss: float | None = field(default=1.0e4, metadata=NO_HASH)
    # Extra Lightning callbacks, each a node with _target_ (e.g. EarlyStopping).
    callbacks: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        _require(self.max_epochs >= 1, f"trainer.max_epochs must be >= 1, got {self.max_epochs}.")
        _require(self.max_loss is None or self.max_loss > 0,
                 f"trainer.max_loss must be > 0 or null, got {self.max_loss}.")  # fmt: skip
        _require(
            self.scheduler in SCHEDULERS,
            f"trainer.scheduler must be one of {', '.join(SCHEDULERS)}, got '{self.scheduler}'.",
        )
        _require(
            0 <= self.warmup_epochs < self.max_epochs,
            f"trainer.warmup_epochs must be in [0, max_epochs), got {self.warmup_epochs}.",
        )
        _require(self.num_nodes >= 1, f"trainer.num_nodes must be >= 1, got {self.num_nodes}.")
        _require(
            self.accelerator in ACCELERATORS,
            f"trainer.accelerator must be one of {', '.join(ACCELERATORS)}, got '{self.accelerator}'.",
        )
        _require(
            str(self.precision) in PRECISIONS,
            f"trainer.precision must be one of {', '.join(PRECISIONS)}, got '{self.precision}'.",
        )
        _check_devices(self.accelerator, self.devices)
        for name in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
            _check_limit(f"trainer.{name}", getattr(self, name))
        if self.gradient_clip_val is not None:
            _require(
                self.gradient_clip_val > 0,
                f"trainer.gradient_clip_val must be > 0, got {self.gradient_clip_val}.",
            )


ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "auto")
PRECISIONS = ("64-true", "64", "32-true", "32", "16-mixed", "16", "bf16-mixed", "bf16",
              "16-true", "bf16-true")  # fmt: skip


def _available_devices(accelerator: str) -> tuple[int, str]:
    """How many devices of ``accelerator`` this machine has, and their name."""
    import os

    if accelerator in ("gpu", "cuda"):
        import torch

        return torch.cuda.device_count(), "CUDA GPUs"
    return os.cpu_count() or 1, "CPU cores (DDP processes)"


def _check_devices(accelerator: str, devices: Any) -> None:
    """``trainer.devices``: a count, ``auto``, -1 or a list of indices, no more than exist."""
    if devices in ("auto", -1, "-1"):
        return
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        count = len(devices)
    else:
        try:
            count = int(str(devices))
        except ValueError:
            raise ConfigError(
                f"trainer.devices must be a number, a list of indices or 'auto', got '{devices}'."
            ) from None
    _require(count >= 1, f"trainer.devices must be >= 1, got {devices}.")
    if accelerator == "auto":  # as Lightning resolves it: a CUDA GPU if one is visible
        import torch

        accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    have, what = _available_devices(accelerator)
    _require(
        count <= have,
        f"trainer.devices={devices} asks for more {what} than this machine has ({have})"
        + (" (no CUDA GPU is visible; use trainer.accelerator=cpu)." if have == 0 else "."),
    )


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
    _require(ok, f"{name} must be a fraction in [0, 1] or a batch count >= 0, got {value}.")


TRACKING_SCHEMES = ("sqlite", "http", "https", "postgresql", "postgresql+psycopg2", "mysql",
                    "databricks")  # fmt: skip


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
        _require(
            0 < self.connect_timeout_s <= 600,
            f"logger.connect_timeout_s must be in (0, 600], got {self.connect_timeout_s}.",
        )
        _require(
            0 < len(self.experiment_name) <= 250,
            f"logger.experiment_name must have 1 to 250 characters, got {len(self.experiment_name)}.",
        )
        if self.tracking_uri is not None:
            scheme = self.tracking_uri.split(":", 1)[0] if ":" in self.tracking_uri else ""
            _require(
                scheme in TRACKING_SCHEMES,
                f"logger.tracking_uri must start with one of {', '.join(TRACKING_SCHEMES)} "
                f"(an MLflow store), got '{self.tracking_uri}'.",
            )


@dataclass
class PathsConfig:
    output_dir: str = "${hydra:runtime.output_dir}"
    data_dir: str = "${oc.env:SPARSEBENCH_DATA_DIR,data}"


@dataclass
class SparsebenchConfig:
    """The whole resolved config of one run."""

    model: Any = MISSING  # a family's schema (MODEL_SCHEMAS)
    dataset: DatasetConfig = MISSING
    method: Any = None  # absent: dense training; ``+method=NAME`` adds one
    transform: Any = None  # absent: the model as configured; ``+transform=NAME`` transforms it
    hardware: Any = MISSING  # the target class's schema (sparsebench.schemas)
    trainer: TrainerConfig = MISSING
    logger: LoggerConfig = MISSING
    paths: PathsConfig = MISSING
    runner: str = "train"  # train | prune (post-training pruning of a trained model)
    checkpoint: str | None = None  # runner=prune: a run folder or .ckpt of the trained model
    seed: int = 0
    tags: dict[str, str] = field(default_factory=dict)
    print_summary: bool = True

    def __post_init__(self) -> None:
        _require(self.seed >= 0, f"seed must be >= 0, got {self.seed}.")
        _require(
            self.runner in RUNNERS,
            f"runner must be one of {', '.join(RUNNERS)}, got '{self.runner}'.",
        )


RUNNERS = ("train", "prune")


@dataclass
class SearchConfig:
    """``python -m sparsebench.search``: the worker's options (conf/search.yaml); the study
    itself is a sweep file."""

    sweep: str = MISSING
    n_trials: int | None = None
    storage: str | None = None
    workers: int = 1
    worker: int = 0
    trial_overrides: list[str] = field(default_factory=list)
    heartbeat_interval: int = 10
    grace_period: int = 30
    poll_s: float = 2.0
    max_failures: int = 3

    def __post_init__(self) -> None:
        _require(self.n_trials is None or self.n_trials >= 1,
                 f"n_trials must be >= 1, got {self.n_trials}.")  # fmt: skip
        _require(1 <= self.workers <= 256, f"workers must be in [1, 256], got {self.workers}.")
        _require(self.worker >= 0, f"worker must be >= 0, got {self.worker}.")
        _require(self.heartbeat_interval >= 1,
                 f"heartbeat_interval must be >= 1 (seconds), got {self.heartbeat_interval}.")  # fmt: skip
        _require(self.grace_period > self.heartbeat_interval,
                 f"grace_period must be longer than heartbeat_interval ({self.heartbeat_interval}), "
                 f"got {self.grace_period}.")  # fmt: skip
        _require(self.poll_s > 0, f"poll_s must be > 0, got {self.poll_s}.")
        _require(self.max_failures >= 1, f"max_failures must be >= 1, got {self.max_failures}.")


@dataclass
class ReproduceConfig:
    """``python -m sparsebench.reproduce``: which claims (sweeps/claims/NAME.yaml, or ``all``),
    the tier, and how to run them (conf/reproduce.yaml)."""

    claim: str = "all"
    tier: str = "quick"
    job: int | None = None  # run only this (arm, seed) job of the plan: for multirun launchers
    seeds: int | None = None  # fewer (or more) seeds than the claim file says; said in the report
    overrides: list[str] = field(default_factory=list)  # added to every run (e.g. logger=none)
    root: str = "outputs/claims"  # runs in ROOT/TIER/CLAIM/ARM-sSEED; the report in ROOT/TIER
    report: str | None = None  # also write the Markdown report here (e.g. docs/claims.md)

    def __post_init__(self) -> None:
        _require(self.tier in ("quick", "full"), f"tier must be quick or full, got '{self.tier}'.")
        _require(self.job is None or self.job >= 0, f"job must be >= 0, got {self.job}.")
        _require(self.seeds is None or self.seeds >= 2,
                 f"seeds must be >= 2 (a paired interval needs two pairs), got {self.seeds}.")  # fmt: skip


SCHEMAS: dict[str, type] = {
    "dataset": DatasetConfig,
    "trainer": TrainerConfig,
    "logger": LoggerConfig,
    "paths": PathsConfig,
}


def register_configs() -> None:
    """Store the schemas; group yamls name them in their defaults list."""
    cs = ConfigStore.instance()
    cs.store(name="sparsebench_schema", node=SparsebenchConfig)
    cs.store(name="search_schema", node=SearchConfig)
    cs.store(name="reproduce_schema", node=ReproduceConfig)
    for group, schema in SCHEMAS.items():
        cs.store(group="schema", name=group, node=schema)
    for family, schema in MODEL_SCHEMAS.items():
        cs.store(group="schema/model", name=family, node=schema)
    cs.store(group="schema/method", name="dense", node=DenseMethodConfig)


def _check_unknown_keys(node: DictConfig, path: str = "") -> None:
    """Reject keys a schema does not declare (``+trainer.max_epoch=3`` slips past Hydra)."""
    schema = OmegaConf.get_type(node)
    if dataclasses.is_dataclass(schema) and not getattr(schema, "OPEN", False):
        allowed = [f.name for f in dataclasses.fields(schema)]
        for key in node:
            if key not in allowed:
                where = path.rstrip(".") or "the top level"
                raise ConfigError(
                    f"unknown key '{path}{key}'; {where} takes: {', '.join(allowed)}."
                )
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
            _check_unknown_keys(child, f"{path}{key}.")


def validate(cfg: DictConfig) -> SparsebenchConfig:
    """Check every key and range of the composed config; raises :class:`ConfigError`."""
    _check_unknown_keys(cfg)
    try:
        return OmegaConf.to_object(cfg)  # runs each schema's __post_init__
    except ConfigError:
        raise
    except Exception as exc:  # OmegaConf validation errors: keep their first line
        raise ConfigError(str(exc).splitlines()[0]) from exc


def _multirun_jobs(args: list[str]) -> list[list[str]]:
    """Single-run argument lists that between them use every value of every swept key (the
    others at their first value): a multirun's composition errors are found before Hydra
    launches anything, in as many compositions as there are values, not their product."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(args)
    except Exception:
        return []  # malformed: Hydra reports it
    plain = [a for a, o in zip(args, parsed, strict=True) if not o.is_sweep_override()]
    sweeps = [(o.get_key_element(), [str(v) for v in o.sweep_string_iterator()])
              for o in parsed if o.is_sweep_override()]  # fmt: skip
    sweeps = [(k, v) for k, v in sweeps if v and not k.lstrip("+~").startswith("hydra")]
    first = [f"{k}={v[0]}" for k, v in sweeps]
    jobs = [plain + first]
    for i, (key, values) in enumerate(sweeps):
        for value in values[1:]:
            jobs.append(plain + first[:i] + [f"{key}={value}"] + first[i + 1 :])
    return jobs


def check_composition(args: list[str], config_name: str) -> None:
    """Compose a single run's config (``config_name``: ``config`` or ``search``) before Hydra does, so that its composition errors (a
    value of the wrong type, a key that does not exist, a group without ``+``) are one
    sentence and exit 2 instead of Hydra's report and exit 1. Runs with flags (``-m``,
    ``--cfg``, ``--help``) are left to Hydra."""
    args = normalize_overrides(args)
    if args and args[0] in ("-m", "--multirun") and not any(a.startswith("-") for a in args[1:]):
        for job in _multirun_jobs(args[1:]):  # each value of each swept key, once
            check_composition(job, config_name)
        return
    if any(a.startswith("-") for a in args):
        return
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    def attempt(overrides: list[str]) -> None:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            validate(compose(config_name=config_name, overrides=overrides))

    try:
        attempt(args)
    except ConfigError:
        return  # a range error: the runner reports it with everything else it checks
    except (HydraException, OmegaConfBaseException) as exc:
        text = str(exc)
        for arg in args:
            key, _, value = arg.partition("=")
            if f"Could not override '{key}'" not in text:
                continue
            if "No match in the defaults list" in text:
                raise ConfigError(
                    f"'{key}' is not chosen by default; add it with +{key}={value}."
                ) from None
            try:  # a key the schema does not have: say which keys it has
                attempt([a if a != arg else f"+{arg}" for a in args])
            except ConfigError as unknown:
                raise unknown from None
            except (HydraException, OmegaConfBaseException):
                pass
            raise ConfigError(f"{arg}: {first_line(exc).rstrip('.')}.") from None
        cause = exc.__cause__ or exc.__context__
        where = next((a for a in args if f"override {a}" in text), None)
        detail = first_line(cause if cause is not None else exc).rstrip(".")
        raise ConfigError(f"{where + ': ' if where else ''}{detail}.") from None


def register_resolvers() -> None:
    """``${sb.prod:${dataset.input_shape}}`` (flattened size), ``${sb.size:...}`` (H) and
    ``${sb.stem:${sweep}}`` (a sweep's name, also when given as a yaml path)."""
    import math

    if not OmegaConf.has_resolver("sb.prod"):
        OmegaConf.register_new_resolver("sb.prod", lambda shape: math.prod(int(d) for d in shape))
    if not OmegaConf.has_resolver("sb.size"):
        OmegaConf.register_new_resolver("sb.size", lambda shape: int(shape[-1]))
    if not OmegaConf.has_resolver("sb.stem"):
        OmegaConf.register_new_resolver("sb.stem", lambda name: Path(str(name)).stem)


CHOICE_GROUPS = (
    "model",
    "dataset",
    "method",
    "transform",
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


OPTIONAL_GROUPS = ("method", "transform")
"""Groups the defaults list declares with a null default: ``method=rigl`` chooses one."""


def shown_override(arg: str) -> str:
    """An override as typed: ``method.sparsity=choice(0.8)``, a single value that
    :func:`normalize_overrides` wrapped for a multirun, as ``method.sparsity=0.8``."""
    key, _, value = arg.partition("=")
    single = re.fullmatch(r"choice\(([^,()]*)\)", value)
    if single and key.lstrip("+").split(".", 1)[0] in OPTIONAL_GROUPS and "." in key:
        return f"{key}={single.group(1)}"
    return arg


def hydra_app(config_name: str, task: Any, check: Any) -> None:
    """The command lines' common entry: ``check(args)`` first (bad input is one ``error:``
    sentence and exit 2, before Hydra and before anything runs), then ``task`` as a Hydra app
    on conf/CONFIG_NAME.yaml."""
    import sys

    import hydra

    try:
        check(sys.argv[1:])
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)(task)()


def normalize_overrides(args: list[str]) -> list[str]:
    """``+method=rigl`` (the spelling the papers' users and older sweeps type) as
    ``method=rigl``: the optional groups are in the defaults list, where Hydra refuses ``+``.

    In a multirun (``-m``), an option of an optional group (``method.sparsity=0.8``) becomes a
    sweep of its one value: Hydra composes a multirun's single values before any job has chosen
    the group, and would refuse the key, so ``-m +method=random,magnitude method.sparsity=0.8``,
    the most natural grid, could not run."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    multirun = any(a in ("-m", "--multirun") for a in args)
    out = []
    for arg in args:
        key, _, value = arg.partition("=")
        if key.startswith("+") and key[1:] in CHOICE_GROUPS:  # every group of the defaults list
            arg = arg[1:]
        elif multirun and key.lstrip("+").split(".", 1)[0] in OPTIONAL_GROUPS and "." in key:
            try:
                (parsed,) = OverridesParser.create().parse_overrides([arg])
            except Exception:
                parsed = None  # malformed: Hydra reports it
            if parsed is not None and not parsed.is_sweep_override() and value:
                arg = f"{key}=choice({value})"
        out.append(arg)
    return out
