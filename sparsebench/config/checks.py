"""Checks of a composed config: unknown keys and ranges (:func:`validate`), group choices that
name no yaml, and a command line's composition errors as one sentence (:func:`check_composition`).
"""

from __future__ import annotations

import dataclasses

from omegaconf import DictConfig, OmegaConf

from sparsebench.config.compose import compose, normalize_overrides
from sparsebench.config.resources import CHOICE_GROUPS, available
from sparsebench.config.schemas import SparsebenchConfig, task_of
from sparsebench.errors import ConfigError, first_line


def _check_unknown_keys(node: DictConfig, path: str = "") -> None:
    """Reject keys a schema does not declare (``+trainer.max_epoch=3`` slips past Hydra)."""
    schema = OmegaConf.get_type(node)
    if dataclasses.is_dataclass(schema) and not getattr(schema, "OPEN", False):
        allowed = [f.name for f in dataclasses.fields(schema)]
        for key in node:
            if key not in allowed:
                where = path.rstrip(".") or "the top level"
                shown = ", ".join(a for a in allowed if a != "_target_")  # not a user's key
                raise ConfigError(f"unknown key '{path}{key}'; {where} takes: {shown}.")
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
            _check_unknown_keys(child, f"{path}{key}.")


def _check_task(cfg: DictConfig) -> None:
    """A language model needs a text dataset and a classifier an image or signal one."""
    model, dataset = cfg.get("model"), cfg.get("dataset")
    if model is None or dataset is None or "name" not in dataset:
        return
    lm_model = str(model.get("_target_", "")).startswith("sparsebench.models.language.")
    lm_data = task_of(cfg) == "language_modeling"
    if lm_model != lm_data:
        want = (
            "a text dataset (dataset=shakespeare, or dataset=text for your own files)"
            if lm_model
            else "an image or signal dataset"
        )
        kind = "a causal language model" if lm_model else "a classifier"
        raise ConfigError(
            f"model '{model.get('model_name')}' is {kind}, but dataset '{dataset.name}' is for "
            f"{task_of(cfg)}; choose {want}."
        )


def _check_optimizer(cfg: DictConfig) -> None:
    """A method that reads the optimizer's step direction (HESSO) names the optimizers it
    knows (its class's ``optimizers``); any other is refused, not silently read as SGD."""
    method, trainer = cfg.get("method"), cfg.get("trainer")
    target = method.get("_target_") if method is not None else None
    if target is None or trainer is None or "optimizer" not in trainer:
        return
    from hydra.utils import get_class

    allowed = getattr(get_class(str(target)), "optimizers", None)
    chosen = str(trainer.optimizer.get("_target_", ""))
    if allowed is not None and chosen not in allowed:
        raise ConfigError(
            f"method '{method.get('name')}' reads the optimizer's step direction, which it "
            f"knows for {', '.join(allowed)}; trainer.optimizer is '{chosen}'."
        )


def validate(cfg: DictConfig) -> SparsebenchConfig:
    """Check every key and range of the composed config; raises :class:`ConfigError`."""
    _check_unknown_keys(cfg)
    _check_task(cfg)
    _check_optimizer(cfg)
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
    sweeps = [
        (o.get_key_element(), [str(v) for v in o.sweep_string_iterator()])
        for o in parsed
        if o.is_sweep_override()
    ]
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
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    def attempt(overrides: list[str]) -> None:
        validate(compose(overrides, config_name))

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
