"""Composing a run's config: the ONE :func:`compose` that the command line's checks, the search
worker, the reproduction suite, the benchmarks and the tests use, and the command lines' common
Hydra entry (:func:`hydra_app`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sparsebench.config.resources import CHOICE_GROUPS, CONF_DIR, OPTIONAL_GROUPS
from sparsebench.errors import ConfigError


def register() -> None:
    """Everything Hydra needs before it composes: the schemas (the run's, the command lines', and
    those made from the method, transform and hardware classes) and the resolvers; idempotent."""
    from hydra.core.config_store import ConfigStore

    from sparsebench.config.commands import ReproduceConfig, SearchConfig
    from sparsebench.config.schemas import register_schemas
    from sparsebench.config.targets import register_targets

    register_schemas()
    store = ConfigStore.instance()
    store.store(name="search_schema", node=SearchConfig)
    store.store(name="reproduce_schema", node=ReproduceConfig)
    register_targets()
    register_resolvers()


def compose(
    overrides: list[str] | tuple[str, ...] = (),
    config_name: str = "config",
    return_hydra_config: bool = False,
) -> DictConfig:
    """The config of ``python -m sparsebench OVERRIDES`` (``config_name``: ``config``, ``search``
    or ``reproduce``), composed as the command line composes it: the one way to compose, used by
    the command line's checks, the search worker, the reproduction suite, the benchmarks and the
    tests. Inside a running Hydra app (the search worker's) Hydra's own instance is used."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register()
    args = normalize_overrides(list(overrides))
    if GlobalHydra.instance().is_initialized():
        return hydra_compose(config_name, args, return_hydra_config=return_hydra_config)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name, args, return_hydra_config=return_hydra_config)


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
    the most natural grid, could not run.

    ``method=null`` (or ``transform=null``) is ``~method``: none, as by default (Hydra refuses a
    group override to null)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    multirun = any(a in ("-m", "--multirun") for a in args)
    out = []
    for arg in args:
        key, _, value = arg.partition("=")
        if key.startswith("+") and key[1:] in CHOICE_GROUPS:  # every group of the defaults list
            arg, key = arg[1:], key[1:]
        if key in OPTIONAL_GROUPS and value == "null":
            arg = f"~{key}"
        elif multirun and key.lstrip("+").split(".", 1)[0] in OPTIONAL_GROUPS and "." in key:
            try:
                (parsed,) = OverridesParser.create().parse_overrides([arg])
            except Exception:
                parsed = None  # malformed: Hydra reports it
            if parsed is not None and not parsed.is_sweep_override() and value:
                arg = f"{key}=choice({value})"
        out.append(arg)
    return out
