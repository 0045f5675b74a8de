"""Config composition and validation: every bad input gets one sentence before training."""

from __future__ import annotations

import re

import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from sparsebench.config.checks import check_group_choices, validate
from sparsebench.config.resources import CHOICE_GROUPS, CONF_DIR, available
from sparsebench.errors import ConfigError
from tests.fixtures import REPO, compose_config

MODELS = available("model")
DATASETS = available("dataset")


def test_every_group_has_configs() -> None:
    for group in CHOICE_GROUPS:
        assert (CONF_DIR / group).is_dir(), group
    assert {
        "resnet18",
        "resnet50",
        "mobilenetv2_100",
        "efficientnet_b0",
        "vit_tiny_patch16_224",
        "mlp",
        "resnet20",
    } <= set(MODELS)
    assert {
        "digits",
        "mnist1d",
        "synthetic",
        "cifar10",
        "cifar100",
        "mnist",
        "fashion_mnist",
        "imagefolder",
    } <= set(DATASETS)


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("model", MODELS)
def test_every_model_and_dataset_compose_and_validate(model: str, dataset: str) -> None:
    """Pairs of one task validate; a language model with an image dataset (or the reverse) is
    one sentence."""
    extra = ["model.name_or_path=/some/folder"] if model == "hf_causal_lm" else []
    cfg = compose_config([f"model={model}", f"dataset={dataset}", *extra], output_dir="/tmp/x")
    lm_model = cfg.model._target_.startswith("sparsebench.models.language.")
    if lm_model != (cfg.dataset.task == "language_modeling"):
        with pytest.raises(ConfigError, match=r"^model '.*' is a .*, but dataset '.*' is for"):
            validate(cfg)
        return
    validate(cfg)
    if lm_model:
        assert model == "hf_causal_lm" or cfg.model.vocab_size == cfg.dataset.vocab_size
    else:
        assert cfg.model.num_classes == cfg.dataset.num_classes
        assert cfg.model.in_chans == cfg.dataset.input_shape[0]


def test_default_is_dense_resnet18_on_digits() -> None:
    cfg = compose_config(output_dir="/tmp/x")
    assert cfg.model.model_name == "resnet18"
    assert cfg.dataset.name == "digits"
    assert cfg.hardware.name == "cpu"
    assert cfg.method is None


def test_method_is_optional_and_added_with_plus() -> None:
    cfg = compose_config(["+method=dense"], output_dir="/tmp/x")
    assert cfg.method.name == "dense"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.max_epochs=0", "trainer.max_epochs must be >= 1, got 0."),
        ("trainer.optimizer.lr=0", "trainer.optimizer.lr must be > 0, got 0.0."),
        ("trainer.optimizer.lr=-0.1", "trainer.optimizer.lr must be > 0, got -0.1."),
        ("dataset.batch_size=0", "dataset.batch_size must be >= 1, got 0."),
        (
            "trainer.scheduler=linear",
            "trainer.scheduler must be one of cosine, constant, step, got 'linear'.",
        ),
        ("dataset.val_fraction=1.5", "dataset.val_fraction must be in (0, 1), got 1.5."),
    ],
)
def test_out_of_range_values_are_one_sentence(override: str, message: str) -> None:
    cfg = compose_config([override], output_dir="/tmp/x")
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert str(err.value) == message


def test_wrong_type_fails_at_composition() -> None:
    with pytest.raises(ConfigCompositionException) as err:
        compose_config(["trainer.max_epochs=ten"])
    assert isinstance(err.value.__cause__, ValidationError)
    assert "trainer.max_epochs" in str(err.value.__cause__)


def test_unknown_key_fails_at_composition() -> None:
    with pytest.raises(ConfigCompositionException) as err:
        compose_config(["trainer.max_epoch=3"])
    assert "Could not override 'trainer.max_epoch'" in str(err.value)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "+trainer.max_epoch=3",
            "unknown key 'trainer.max_epoch'; trainer takes: max_epochs, optimizer,",
        ),
        ("+dataset.colour=red", "unknown key 'dataset.colour'; dataset takes: name,"),
        (
            "+trainer.optimizer.moment=0.9",
            "unknown key 'trainer.optimizer.moment'; trainer.optimizer takes: ",
        ),
        ("+sead=1", "unknown key 'sead'; the top level takes: model, dataset,"),
    ],
)
def test_added_unknown_keys_are_one_sentence(override: str, message: str) -> None:
    cfg = compose_config([override], output_dir="/tmp/x")
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert str(err.value).startswith(message)


@pytest.mark.parametrize(
    ("args", "group", "bad"),
    [
        (["model=resnet1"], "model", "resnet1"),
        (["dataset=imagenet"], "dataset", "imagenet"),
        (["+method=rigl_typo"], "method", "rigl_typo"),
        (["hardware=tpu"], "hardware", "tpu"),
        (["-m", "model=mlp,resnet99"], "model", "resnet99"),
    ],
)
def test_unknown_names_list_what_exists(args: list[str], group: str, bad: str) -> None:
    with pytest.raises(ConfigError) as err:
        check_group_choices(args)
    message = str(err.value)
    assert message.startswith(f"unknown {group} '{bad}'; available: ")
    assert ", ".join(available(group)) in message


def test_known_names_pass() -> None:
    check_group_choices(
        ["model=mlp", "dataset=mnist1d", "+method=dense", "hydra/launcher=basic", "seed=1"]
    )


def test_grids_in_sweeps_are_on_the_search_path() -> None:
    from sparsebench.config.compose import compose

    check_group_choices(["+grid=seeds"])
    cfg = compose(["+grid=seeds"], return_hydra_config=True)
    assert cfg.hydra.sweeper.params.seed == "0,1,2"
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"


def test_docker_compose_is_well_formed() -> None:
    import yaml

    compose_file = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose_file["services"]
    assert {"postgres", "mlflow", "optuna-dashboard"} <= set(services)
    for name, service in services.items():
        assert "image" in service, name
        for dep in service.get("depends_on", {}):
            assert dep in services
    for volume in (v.split(":")[0] for s in services.values() for v in s.get("volumes", [])):
        assert volume in compose_file["volumes"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "trainer.accelerator=quantum",
            "trainer.accelerator must be one of cpu, gpu, cuda, mps, auto, got 'quantum'.",
        ),
        (
            "trainer.precision=bogus",
            "trainer.precision must be one of 64-true, 64, 32-true, 32, 16-mixed, 16, bf16-mixed, bf16, 16-true, bf16-true, got 'bogus'.",
        ),
        (
            "trainer.devices=abc",
            "trainer.devices must be a number, a list of indices or 'auto', got 'abc'.",
        ),
        (
            "trainer.limit_train_batches=-1",
            "trainer.limit_train_batches must be a fraction in [0, 1] or a batch count >= 0, got -1.",
        ),
        (
            "trainer.limit_val_batches=1.5",
            "trainer.limit_val_batches must be a fraction in [0, 1] or a batch count >= 0, got 1.5.",
        ),
        (
            "logger.tracking_uri=ftp://x",
            "logger.tracking_uri must start with one of sqlite, http, https, postgresql, postgresql+psycopg2, mysql, databricks (an MLflow store), got 'ftp://x'.",
        ),
        ("logger.connect_timeout_s=-1", "logger.connect_timeout_s must be in (0, 600], got -1.0."),
    ],
)
def test_trainer_and_logger_options_are_one_sentence(override, message) -> None:
    with pytest.raises(ConfigError) as error:
        validate(compose_config([override], output_dir="/tmp/x"))
    assert str(error.value).startswith(message)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "trainer.accelerator=gpu",
            "trainer.devices=1 asks for more CUDA GPUs than this machine has (0) (no CUDA GPU is visible; use trainer.accelerator=cpu).",
        ),
        (
            "trainer.devices=99",
            "trainer.devices=99 asks for more CPU cores (DDP processes) than this machine has (",
        ),
    ],
)
def test_the_machine_is_asked_where_the_run_starts_not_when_a_config_validates(
    override, message
) -> None:
    from sparsebench.training.machine import check_machine

    if override == "trainer.accelerator=gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: asking for one is valid")
    cfg = compose_config([override], output_dir="/tmp/x")
    validate(cfg)  # a saved config validates on any host
    with pytest.raises(ConfigError) as error:
        check_machine(cfg)
    assert str(error.value).startswith(message)


def test_bf16_is_refused_on_a_gpu_without_it_and_said_to_be_emulated_on_such_a_cpu(
    monkeypatch, caplog
) -> None:
    from sparsebench.training import machine

    cfg = compose_config(["trainer.precision=bf16-mixed"], output_dir="/tmp/x")
    monkeypatch.setattr(machine, "training_device", lambda cfg: "cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "Tesla T4")
    with pytest.raises(ConfigError, match=r"^trainer.precision=bf16-mixed needs a GPU .* Tesla T4"):
        machine.check_precision(cfg)
    monkeypatch.setattr(machine, "training_device", lambda cfg: "cpu")
    monkeypatch.setattr(machine, "cpu_has_bf16", lambda: False)
    machine.check_precision(cfg)
    assert "no native bfloat16" in caplog.text


def test_hardware_options_are_one_sentence() -> None:
    from sparsebench.training.parts import build_hardware

    for overrides, message in [
        (
            ["hardware=cpu_sparse", "hardware.block_sizes=[0]"],
            "hardware.block_sizes must all be >= 1, got [0].",
        ),
        (["hardware.dtype=fp8"], "hardware.dtype must be one of "),
        (["hardware.threads=0"], "hardware.threads must be >= 1, got 0."),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            build_hardware(compose_config(overrides, output_dir="/tmp/x"))


def test_a_run_holds_only_the_options_of_its_own_model_method_and_target() -> None:
    from sparsebench.record.identity import flatten

    cfg = compose_config(["model=mlp", "dataset=mnist1d", "+method=rigl"], output_dir="/tmp/x")
    params = flatten(OmegaConf.to_container(cfg, resolve=True))
    model = {k.removeprefix("model.") for k in params if k.startswith("model.")}
    assert model == {
        "_target_",
        "model_name",
        "pretrained",
        "num_classes",
        "in_chans",
        "in_features",
        "hidden_dims",
        "drop_rate",
    }
    hardware = {k for k in params if k.startswith("hardware.")}
    assert "hardware.kernels" not in hardware and "hardware.peak_tflops" not in hardware
    assert (
        "method.drop_fraction" in params and "method.grow_init" not in params
    )  # RigL's, not SET's


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["+method=rigl", "method.update_interval=ten"], "method.update_interval=ten: "),
        (["+method=rigl", "method.exclude=0"], "method.exclude=0: "),
        (["+transform=monarch", "transform.nblocks=four"], "transform.nblocks=four: "),
        (
            ["+method=rigl", "+method.drop_frac=0.1"],
            "unknown key 'method.drop_frac'; method takes: ",
        ),
        (["hardware=a100", "+hardware.kernels=[csr]"], "unknown key 'hardware.kernels'"),
    ],
)
def test_method_transform_and_target_schemas_check_keys_and_types(args, message) -> None:
    from sparsebench.config.checks import check_composition

    with pytest.raises(ConfigError) as err:  # types when composing, added keys when validating
        check_composition(args, "config")
        validate(compose_config(args, output_dir="/tmp/x"))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_method_is_an_optional_group_chosen_with_or_without_plus() -> None:
    from sparsebench.config.checks import check_composition
    from sparsebench.config.compose import normalize_overrides

    for spelling in ("method=rigl", "+method=rigl"):
        cfg = compose_config([spelling, "method.sparsity=0.5"])
        assert cfg.method.name == "rigl" and cfg.method.sparsity == 0.5 and cfg.transform is None
        check_composition([spelling], "config")
    assert compose_config(["method=sparse_ift"]).transform.name == "sparse_ift"  # its preset
    assert compose_config([]).method is None  # dense by default
    assert normalize_overrides(
        ["-m", "+method=random,magnitude", "method.sparsity=0.8", "seed=1"]
    ) == ["-m", "method=random,magnitude", "method.sparsity=choice(0.8)", "seed=1"]
    assert normalize_overrides(["method.sparsity=0.8"]) == ["method.sparsity=0.8"]  # a single run
    assert normalize_overrides(["+experiment=mnist1d_mlp"]) == ["experiment=mnist1d_mlp"]
