"""Study definitions (``sweeps/NAME.yaml``): search space, objectives, sampler, pruner, storage.

A study file names the base overrides every trial gets, a search space over config keys, the
objectives (results-contract metrics with directions), the sampler and trial pruner, the trial
count and the storage. Everything is checked before any trial runs, and each problem is one
sentence naming the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from omegaconf import OmegaConf

from sparsebench.config.resources import SWEEPS_DIR
from sparsebench.errors import ConfigError, first_line
from sparsebench.record.contract import DIRECTIONS, MAXIMIZE, VALIDATED_BY, contract_metrics

# Short names of Optuna's samplers and pruners; any other by ``_target_`` (its import path).
SAMPLERS = {
    "random": "optuna.samplers.RandomSampler",
    "tpe": "optuna.samplers.TPESampler",
    "nsga2": "optuna.samplers.NSGAIISampler",
    "nsga3": "optuna.samplers.NSGAIIISampler",
    "cmaes": "optuna.samplers.CmaEsSampler",
    "gp": "optuna.samplers.GPSampler",
    "qmc": "optuna.samplers.QMCSampler",
    "bruteforce": "optuna.samplers.BruteForceSampler",
}
PRUNERS = {
    "none": "optuna.pruners.NopPruner",
    "median": "optuna.pruners.MedianPruner",
    "percentile": "optuna.pruners.PercentilePruner",
    "hyperband": "optuna.pruners.HyperbandPruner",
    "successive_halving": "optuna.pruners.SuccessiveHalvingPruner",
    "threshold": "optuna.pruners.ThresholdPruner",
    "wilcoxon": "optuna.pruners.WilcoxonPruner",
}


def _component(
    node: dict[str, Any], names: dict[str, str], base: type, what: str, where: str
) -> type:
    """The class a sampler or pruner node names: ``name`` (a short name) or ``_target_``."""
    from hydra.utils import get_class

    target = node.get("_target_") or names.get(str(node.get("name")))
    if target is None:
        raise ConfigError(
            f"{where}: {what} '{node.get('name')}' is unknown; give one of "
            f"{', '.join(names)} as name, or any Optuna {what} class as _target_ "
            "(e.g. optuna.samplers.CmaEsSampler)."
        )
    try:
        cls = get_class(str(target))
    except Exception:
        raise ConfigError(f"{where}: {what} _target_ '{target}' cannot be imported.") from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConfigError(f"{where}: {what} _target_ '{target}' is not an Optuna {what}.")
    return cls


PARAM_TYPES = ("categorical", "int", "float")
DEFAULT_STORAGE = "sqlite:///optuna.db"
STUDY_KEYS = (
    "study_name",
    "overrides",
    "space",
    "objectives",
    "sampler",
    "pruner",
    "n_trials",
    "storage",
    "max_retry",
    "description",
    "baseline",
)


@dataclass
class Param:
    """One search dimension over a config key (``method.sparsity``) or group (``+method``)."""

    key: str
    type: str
    choices: list[Any] = field(default_factory=list)
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(self.key, self.choices)
        if self.type == "int":
            return trial.suggest_int(
                self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def corners(self) -> list[Any]:
        """Values that together exercise the whole range (for checking before any trial)."""
        return list(self.choices) if self.type == "categorical" else [self.low, self.high]


@dataclass
class Objective:
    metric: str
    direction: str


@dataclass
class StudySpec:
    name: str
    overrides: list[str]
    space: list[Param]
    objectives: list[Objective]
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    n_trials: int
    storage: str
    max_retry: int = 2
    description: str = ""
    path: Path | None = None
    baseline: dict[str, Any] | None = None  # the random-search baseline's comparison

    def for_task(self, task: str) -> StudySpec:
        """The spec for trials of ``task``: the objectives recorded by its runs (none given:
        its validation quality, ``val/acc`` or ``val/ppl``), or one sentence."""
        if not self.objectives:
            metric = VALIDATED_BY[task]
            return dataclasses.replace(self, objectives=[Objective(metric, DIRECTIONS[metric])])
        recorded = contract_metrics(task)
        for objective in self.objectives:
            if objective.metric not in recorded:
                raise ConfigError(
                    f"sweep '{self.name}': objective '{objective.metric}' is not recorded by "
                    f"{task} runs; allowed: {', '.join(recorded)}."
                )
        return self

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def make_sampler(self, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
        options = {k: v for k, v in self.sampler.items() if k not in ("name", "_target_")}
        if options.get("seed") is not None:  # each worker its own stream, reproducibly
            options["seed"] = int(options["seed"]) + seed_offset
        cls = _component(self.sampler, SAMPLERS, optuna.samplers.BaseSampler, "sampler", self.name)
        return cls(**options)

    def make_pruner(self) -> optuna.pruners.BasePruner:
        options = {k: v for k, v in self.pruner.items() if k not in ("name", "_target_", "monitor")}
        cls = _component(self.pruner, PRUNERS, optuna.pruners.BasePruner, "pruner", self.name)
        return cls(**options)

    @property
    def prunes(self) -> bool:
        return self.pruner.get("name") not in (None, "none") or "_target_" in self.pruner


def sweep_path(name: str) -> Path:
    """``sweeps/NAME.yaml``, or a yaml path given directly."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    found = SWEEPS_DIR / f"{name}.yaml"
    if not found.is_file():
        known = sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown sweep '{name}'; available: {', '.join(known)}.")
    return found


def _param(key: str, node: dict[str, Any], where: str) -> Param:
    kind = node.get("type")
    if kind not in PARAM_TYPES:
        raise ConfigError(f"{where}: '{key}' has type {kind!r}; allowed: {', '.join(PARAM_TYPES)}.")
    unknown = set(node) - {"type", "choices", "low", "high", "log", "step"}
    if unknown:
        raise ConfigError(
            f"{where}: '{key}' has unknown option(s) {', '.join(sorted(unknown))}; "
            "allowed: type, choices, low, high, log, step."
        )
    if kind == "categorical":
        choices = list(node.get("choices") or [])
        if not choices:
            raise ConfigError(f"{where}: '{key}' has an empty list of choices.")
        return Param(key, kind, choices=choices)
    low, high = node.get("low"), node.get("high")
    if low is None or high is None:
        raise ConfigError(f"{where}: '{key}' ({kind}) needs low and high.")
    if not low < high:
        raise ConfigError(
            f"{where}: '{key}' has an empty range [{low}, {high}]; low must be below high."
        )
    if node.get("log") and low <= 0:
        raise ConfigError(f"{where}: '{key}' is log-scaled, so low must be > 0, got {low}.")
    return Param(
        key, kind, low=low, high=high, log=bool(node.get("log", False)), step=node.get("step")
    )


def load_spec(name: str, n_trials: int | None = None, storage: str | None = None) -> StudySpec:
    """Read and check ``sweeps/NAME.yaml`` (command-line ``n_trials``/``storage`` win)."""
    path = sweep_path(name)
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as exc:  # YAML syntax or interpolation errors of a user's file
        raise ConfigError(f"sweep file {path} cannot be read ({first_line(exc)}).") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"sweep file {path} must be a mapping of study fields.")
    where = f"sweep '{path.stem}'"
    unknown = set(raw) - set(STUDY_KEYS)
    if unknown:
        raise ConfigError(
            f"{where} has unknown key(s) {', '.join(sorted(unknown))}; "
            f"allowed: {', '.join(STUDY_KEYS)}."
        )
    space = [_param(k, v or {}, where) for k, v in (raw.get("space") or {}).items()]
    if not space:
        raise ConfigError(f"{where} has an empty search space.")
    objectives = []  # none given: the validation quality of the study's task (for_task)
    for node in raw.get("objectives") or []:
        metric = node.get("metric")
        if metric not in DIRECTIONS:
            raise ConfigError(
                f"{where}: objective '{metric}' is not in the results contract; "
                f"allowed: {', '.join(DIRECTIONS)}."
            )
        # A metric's direction is declared once (sparsebench.record.contract.DIRECTIONS); a
        # study may restate it, never reverse it.
        direction = node.get("direction", DIRECTIONS[metric])
        if direction != DIRECTIONS[metric]:
            raise ConfigError(
                f"{where}: objective '{metric}' is better when it is "
                f"{'higher' if DIRECTIONS[metric] == MAXIMIZE else 'lower'}; its direction is "
                f"'{DIRECTIONS[metric]}', got '{direction}'."
            )
        objectives.append(Objective(metric, direction))
    sampler = dict(raw.get("sampler") or {"name": "tpe"})
    _component(sampler, SAMPLERS, optuna.samplers.BaseSampler, "sampler", where)
    pruner = dict(raw.get("pruner") or {"name": "none"})
    _component(pruner, PRUNERS, optuna.pruners.BasePruner, "pruner", where)
    pruning = pruner.get("name") not in (None, "none") or "_target_" in pruner
    if len(objectives) > 1 and pruning:
        raise ConfigError(
            f"{where}: pruner '{pruner.get('name') or pruner.get('_target_')}' cannot prune a "
            "multi-objective study (Optuna reports one value per step); use pruner: {name: none}."
        )
    trials = int(n_trials if n_trials is not None else raw.get("n_trials") or 20)
    if trials < 1:
        raise ConfigError(f"{where}: n_trials must be >= 1, got {trials}.")
    spec = StudySpec(
        name=str(raw.get("study_name") or path.stem),
        overrides=[str(o) for o in raw.get("overrides") or []],
        space=space,
        objectives=objectives,
        sampler=sampler,
        pruner=pruner,
        n_trials=trials,
        storage=str(storage or raw.get("storage") or DEFAULT_STORAGE),
        max_retry=int(raw.get("max_retry", 2)),
        description=str(raw.get("description") or ""),
        path=path,
        baseline=raw.get("baseline"),
    )
    for param in spec.space:  # build them once: a bad option fails here, not in a trial
        if param.key in {o.split("=", 1)[0] for o in spec.overrides}:
            raise ConfigError(
                f"{where}: '{param.key}' is both in overrides and in the search space."
            )
    try:
        spec.make_sampler(), spec.make_pruner()
    except TypeError as exc:  # an option the sampler or pruner does not take
        raise ConfigError(f"{where}: {exc}.") from None
    return spec


BASELINE_KEYS = ("method", "compare", "sparsities", "seeds")


def baseline_options(spec: StudySpec) -> dict[str, Any]:
    """The baseline's options of a sweep file, checked."""
    where = f"sweep '{spec.name}' baseline"
    options = dict(spec.baseline or {})
    unknown = set(options) - set(BASELINE_KEYS)
    if unknown:
        raise ConfigError(
            f"{where} has unknown key(s) {', '.join(sorted(unknown))}; "
            f"allowed: {', '.join(BASELINE_KEYS)}."
        )
    options.setdefault("method", "node")
    options.setdefault("compare", "random")
    sparsities, seeds = list(options.get("sparsities") or []), list(options.get("seeds") or [])
    if not sparsities or not all(0 < float(s) < 1 for s in sparsities):
        raise ConfigError(
            f"{where}: sparsities must be a non-empty list in (0, 1), got {sparsities}."
        )
    if len(seeds) < 2:
        raise ConfigError(f"{where}: seeds needs at least 2 seeds for a std, got {seeds}.")
    return {
        **options,
        "sparsities": [float(s) for s in sparsities],
        "seeds": [int(s) for s in seeds],
    }


def baseline_cell(
    spec: StudySpec, options: dict[str, Any], sparsity: float, seed: int
) -> StudySpec:
    """The node-space search at one (sparsity, seed): a study of its own."""
    sampler = dict(spec.sampler)
    if sampler.get("seed") is not None:
        sampler["seed"] = int(sampler["seed"]) + 7919 * seed + round(1000 * sparsity)
    return dataclasses.replace(
        spec,
        name=f"{spec.name}.s{sparsity:g}.seed{seed}",
        sampler=sampler,
        baseline=None,
        overrides=[
            *spec.overrides,
            f"+method={options['method']}",
            f"method.sparsity={sparsity}",
            f"seed={seed}",
        ],
    )
