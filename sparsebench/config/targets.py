"""Typed schemas of the method, transform and hardware groups, made from their classes.

A method's (or transformation's, or hardware target's) constructor is its schema: its keyword
arguments, their type hints and defaults, through its base classes (``**kwargs`` forwards to
them). :func:`register_targets` turns each group yaml's ``_target_`` class into a structured
config stored as ``schema/<group>/<yaml name>``, which the yaml names in its defaults list, so an
unknown key or a value of the wrong type fails when Hydra composes, in one sentence, and the
run hash reads the defaults from the schema (sparsebench.record.identity). Adding a method
stays one class and one yaml: the schema follows from the class. Written here because Hydra
and OmegaConf make structured configs from dataclasses only, not from signatures. Classes are
loaded by their ``_target_`` names, as Hydra's ``instantiate`` does.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import types
import typing
from functools import cache
from typing import Any, Optional  # noqa: UP035  (OmegaConf reads typing's spellings)

from hydra.core.config_store import ConfigStore
from hydra.utils import get_class
from omegaconf import MISSING, OmegaConf

from sparsebench.config.resources import CONF_DIR

SCHEMA_GROUPS = ("method", "transform", "hardware")


def _omegaconf_type(hint: Any) -> Any:
    """The type OmegaConf can check for a constructor's type hint (Any where it cannot)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in (bool, int, float, str):
        return hint
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        inner = _omegaconf_type(rest[0]) if len(rest) == 1 else Any
        return Optional[inner] if len(rest) < len(args) and inner is not Any else inner  # noqa: UP045
    if origin in (list, tuple, collections.abc.Sequence) or hint in (list, tuple):
        inner = _omegaconf_type(args[0]) if args else Any
        return list[inner] if inner in (bool, int, float, str) else list[Any]
    if origin in (dict, collections.abc.Mapping) or hint is dict:
        value = _omegaconf_type(args[1]) if len(args) == 2 else Any
        return dict[str, value] if value in (bool, int, float, str) else dict[str, Any]
    return Any


def _parameters(target: type) -> dict[str, tuple[Any, Any]]:
    """name -> (type hint, default) over ``target``'s constructor and, while it forwards
    ``**kwargs``, its base classes' constructors; the most derived class wins."""
    found: dict[str, tuple[Any, Any]] = {}
    for cls in target.__mro__:
        init = cls.__dict__.get("__init__")
        if init is None:
            continue
        if cls is object:
            break
        hints = typing.get_type_hints(init)
        forwards = False
        for name, param in inspect.signature(init).parameters.items():
            if param.kind is param.VAR_KEYWORD:
                forwards = True
            elif name != "self" and param.kind is not param.VAR_POSITIONAL and name not in found:
                default = param.default if param.default is not param.empty else MISSING
                found[name] = (hints.get(name, Any), default)
        if not forwards:
            break
    return found


@cache
def schema_of(target: str) -> type:
    """A dataclass with a field per constructor argument of the class ``target`` names; it is
    an attribute of this module (``RigLSchema``), so configs that hold it pickle by reference
    and unpickle in another process (submitit jobs, DDP ranks)."""
    # _target_ has no default: the yaml names it, and it is part of every run hash.
    fields: list[tuple[str, Any, Any]] = [("_target_", str, dataclasses.field(default=MISSING))]
    for name, (hint, default) in _parameters(get_class(target)).items():
        kind = _omegaconf_type(hint)
        if isinstance(default, (list, tuple)):
            value = dataclasses.field(default_factory=lambda d=list(default): list(d))
        elif isinstance(default, collections.abc.Mapping):
            value = dataclasses.field(default_factory=lambda d=dict(default): dict(d))
        else:
            value = dataclasses.field(default=default)
        fields.append((name, kind, value))
    name = target.rpartition(".")[2] + "Schema"
    while name in globals() and globals()[name].__dataclass_fields__["_target_"].metadata.get(
        "target"
    ) not in (None, target):
        name = "_" + name  # two classes of one name in different modules
    fields[0] = ("_target_", str, dataclasses.field(default=MISSING, metadata={"target": target}))
    schema = dataclasses.make_dataclass(name, fields)
    schema.__module__, schema.__qualname__ = __name__, name
    globals()[name] = schema
    return schema


def __getattr__(name: str) -> type:
    """Schemas by name, made on first use (unpickling a config in a fresh process)."""
    if name.endswith("Schema"):
        register_targets()
        if name in globals():
            return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


METHOD_KINDS = ("training", "structured", "post_training", "transform_preset")


def _overrides_transform(node: Any) -> bool:
    """Whether a method yaml's defaults list sets the transform group (a preset)."""
    for entry in node.get("defaults") or []:
        keys = entry.keys() if isinstance(entry, collections.abc.Mapping) else [str(entry)]
        if any(key.removeprefix("override ").lstrip("/").startswith("transform") for key in keys):
            return True
    return False


def method_kind(name: str) -> tuple[str, bool]:
    """The kind of the method yaml ``name`` (one of :data:`METHOD_KINDS`) and whether it masks
    weights: a yaml that sets the transform group is a ``transform_preset`` (Sparse-IFT,
    Monarch, DASS); otherwise its class declares its ``kind``; no ``_target_`` (dense) is
    training without masks."""
    node = OmegaConf.load(CONF_DIR / "method" / f"{name}.yaml")
    target = node.get("_target_")
    if _overrides_transform(node):
        return "transform_preset", target is not None
    if target is None:
        return "training", False
    return get_class(str(target)).kind, True


def list_methods(
    kind: str | collections.abc.Iterable[str] | None = None, masked: bool | None = None
) -> list[str]:
    """The method yamls of ``kind`` (one kind, several, or None: all), sorted; ``masked``:
    only those that mask weights (True) or only those that do not (False). timm's
    ``list_models(filter=...)`` is the model."""
    kinds = {kind} if isinstance(kind, str) else set(kind or METHOD_KINDS)
    unknown = kinds - set(METHOD_KINDS)
    if unknown:
        raise ValueError(f"unknown method kind {sorted(unknown)}; kinds: {', '.join(METHOD_KINDS)}")
    out = []
    for path in sorted((CONF_DIR / "method").glob("*.yaml")):
        found, masks = method_kind(path.stem)
        if found in kinds and masked in (None, masks):
            out.append(path.stem)
    return out


def register_targets() -> None:
    """Store the schema of every method, transform and hardware yaml's ``_target_`` class."""
    store = ConfigStore.instance()
    for group in SCHEMA_GROUPS:
        for path in sorted((CONF_DIR / group).glob("*.yaml")):
            target = OmegaConf.load(path).get("_target_")
            if target:
                store.store(group=f"schema/{group}", name=path.stem, node=schema_of(str(target)))
