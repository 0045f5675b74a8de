"""Property-based: overrides drawn across the whole config tree (every key of the composed
config with a method added: wrong types, out of range, empty, unicode, huge, NaN) either make
a valid run or fail with one ConfigError sentence, never another exception. In-process (the
command line turns a ConfigError into `error: ...` and exit 2; tests/cli/test_cli.py checks that
path once per entry point)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from sparsebench.config.checks import check_composition, check_group_choices, validate
from sparsebench.errors import ConfigError
from sparsebench.record.identity import flatten
from tests.fixtures import compose_config

BASE = ["model=mlp", "dataset=digits", "+method=rigl"]


def _keys() -> list[str]:
    cfg = compose_config(BASE, output_dir="/tmp/x")
    tree = OmegaConf.to_container(cfg, resolve=False)
    # Every user option; `_target_` (which class a yaml builds) is the yaml's, not an option.
    keys = [
        k
        for k in flatten(tree)
        if not k.startswith(("paths.", "hydra")) and not k.endswith("_target_")
    ]
    return sorted(keys)


KEYS = _keys()
VALUES = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.sampled_from(
        [
            "nan",
            "inf",
            "-inf",
            "1e23",
            "-1",
            "0",
            "0.0",
            "",
            "null",
            "true",
            "[]",
            "[0]",
            "{}",
            "abc",
            "1.5",
            "999999",
            "'x y'",
        ]
    ),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12).map(repr),
)


def outcome(overrides: list[str]) -> str:
    """``ok`` or ``error: <one sentence>``; anything else raises (the test fails)."""
    from sparsebench.training.parts import build_hardware, build_method

    try:
        check_group_choices(overrides)
        check_composition(overrides, "config")
        cfg = compose_config(overrides, output_dir="/tmp/x")
        validate(cfg)
        build_hardware(cfg)
        build_method(cfg)
    except ConfigError as exc:
        message = str(exc)
        assert message and "\n" not in message, message
        return f"error: {message}"
    return "ok"


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(KEYS), value=VALUES)
def test_any_override_is_a_valid_run_or_one_sentence(key: str, value: str) -> None:
    outcome([*BASE, f"{key}={value}"])


@pytest.mark.parametrize(
    "override",
    [
        "trainer.max_epochs=1e23",
        "seed=-1",
        "trainer.optimizer.lr=nan",
        "method.sparsity=inf",
        "dataset.batch_size=0",
        "hardware.batch_size=-3",
        "trainer.devices=[]",
        "model.drop_rate=2",
    ],
)
def test_known_bad_values_are_refused(override: str) -> None:
    assert outcome([*BASE, override]).startswith("error: ")
