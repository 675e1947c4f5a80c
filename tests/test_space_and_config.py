from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from autocompress.config import load_config
from autocompress.errors import ConfigError, SpaceError
from autocompress.space import DEFAULT_KNOBS, load_space, parse_space
from autocompress.tasks import TaskSpec, untrained_model

REPO = Path(__file__).resolve().parents[1]


def cnn():
    return untrained_model(TaskSpec(model="digits-cnn"))


def test_default_yaml_is_the_builtin_default() -> None:
    from_file = load_space(REPO / "search_spaces/default.yaml")
    assert from_file.knobs == DEFAULT_KNOBS
    assert from_file.resolve(cnn()).to_dict() == load_space(None).resolve(cnn()).to_dict()


def test_space_from_yaml_selects_layers_and_applies_overrides(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text(
        "layers: ['conv*', 'fc1']\n"
        "exclude: ['conv1']\n"
        "knobs:\n  sparsity: {low: 0.1, high: 0.9, step: 0.1}\n  bits: [4, 8]\n  rank: 1.0\n"
        "overrides:\n  - layers: fc1\n    bits: 6\n    rank: {low: 0.2, high: 0.5, step: 0.1}\n"
    )
    space = load_space(f).resolve(cnn())
    assert list(space.layers) == ["conv2", "fc1"]
    assert space.layers["conv2"].knobs["bits"].choices == (4, 8)
    assert space.layers["fc1"].knobs["bits"].value == 6
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    trial = study.ask()
    plan = space.sample(trial)
    assert set(trial.params) == {"conv2.sparsity", "conv2.bits", "fc1.sparsity", "fc1.rank"}
    assert plan.layers["fc1"].bits == 6
    assert plan.layers["conv2"].rank is None  # rank fraction 1.0 = not factorized
    assert 13 <= plan.layers["fc1"].rank <= 32  # 0.2..0.5 of full rank 64


def test_rank_fraction_maps_to_integer_rank() -> None:
    space = load_space(None).resolve(cnn())
    fc1 = space.layers["fc1"]
    assert fc1.full_rank == 64
    assert fc1.rank_from_fraction(0.5) == 32
    assert fc1.rank_from_fraction(0.01) == 1
    assert fc1.rank_from_fraction(1.0) is None


def test_uniform_params_snap_to_each_layer_domain() -> None:
    space = load_space(None).resolve(cnn())
    params = space.uniform_params(sparsity=0.52, bits=7, rank=1.0)
    assert params["fc1.sparsity"] == 0.5
    assert params["fc1.bits"] in (6, 8)
    assert params["fc1.rank"] == 1.0


@pytest.mark.parametrize(
    "text, needle",
    [
        ("knobs: {sparsity: 1.5}", "sparsity 1.5"),
        ("knobs: {bits: [1, 4]}", "1 bits"),
        ("knobs: {rank: 0}", "rank 0"),
        ("knobs: {rank: {low: 0.0, high: 0.5}}", "rank 0.0"),
        ("knobs: {bits: []}", "empty list"),
        ("knobs: {bits: [4, 4]}", "twice"),
        ("knobs: {sparsty: 0.5}", "did you mean 'sparsity'"),
        ("layerz: ['*']", "did you mean 'layers'"),
        ("knobs: {sparsity: {low: 0.8, high: 0.2}}", "swap"),
        ("knobs: {sparsity: {lo: 0.1, high: 0.2}}", "did you mean 'low'"),
        ("overrides: [{bits: [4]}]", "overrides[0]"),
    ],
)
def test_bad_space_values_name_the_key_and_file(text: str, needle: str) -> None:
    with pytest.raises(SpaceError) as err:
        parse_space(__import__("yaml").safe_load(text), "my-space.yaml")
    assert needle in str(err.value) and "my-space.yaml" in str(err.value)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("layers: ['fc9']", "'fc9'"),
        ("exclude: ['nothing*']", "'nothing*'"),
        ("overrides: [{layers: ['conv7'], bits: [4]}]", "'conv7'"),
    ],
)
def test_globs_matching_nothing_are_errors(text: str, needle: str) -> None:
    spec = parse_space(__import__("yaml").safe_load(text), "s.yaml")
    with pytest.raises(SpaceError) as err:
        spec.resolve(cnn())
    assert needle in str(err.value) and "conv1, conv2, fc1, fc2" in str(err.value)


def test_config_file_and_overrides(tmp_path: Path) -> None:
    f = tmp_path / "study.yaml"
    f.write_text("name: x\ntask: {model: digits-mlp}\nspace: spaces/s.yaml\nsearch: {trials: 7}\n")
    config = load_config(f, {"search.workers": 0, "search.trials": None})
    assert config.name == "x" and config.task.model == "digits-mlp"
    assert config.search.trials == 7 and config.search.workers == 0
    assert Path(config.space) == tmp_path / "spaces/s.yaml"  # relative to the config file


@pytest.mark.parametrize(
    "text, needle",
    [
        ("serch: {trials: 3}", "did you mean 'search'"),
        ("search: {trials: 0}", "search.trials"),
        ("search: {trials: many}", "must be an integer"),
        ("search: {sampler: cmaes}", "tpe, nsga2, gp, random"),
        ("finetune: {stepz: 3}", "did you mean 'finetune.steps'"),
        ("search: [1, 2]", "must be a mapping"),
        ("name: [unclosed", "fix the YAML syntax"),
    ],
)
def test_bad_config_names_key_and_file(tmp_path: Path, text: str, needle: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(f)
    assert needle in str(err.value) and str(f) in str(err.value)


def test_plan_from_params_rebuilds_a_sampled_plan() -> None:
    space = load_space(None).resolve(cnn())
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3)).ask()
    plan = space.sample(trial)
    assert space.plan_from_params(trial.params) == plan


def test_warm_start_adds_channel_plans_when_the_space_allows_them() -> None:
    space = load_space(None).resolve(cnn())
    params = space.uniform_params(0.75, 4, 1.0, "channel")
    assert space.allows_channel and params["conv1.sparsity_mode"] == "channel" and params["fc1.sparsity"] == 0.75


def test_a_knob_switched_off_for_a_layer_says_why() -> None:
    from autocompress.tasks import model_skeleton

    model, example = model_skeleton(TaskSpec(model="test-tiny-resnet"))
    knobs = {"sparsity": {"low": 0.0, "high": 0.5}, "sparsity_mode": ["unstructured", "channel"], "bits": [8, 32], "rank": {"low": 0.5, "high": 1.0}}
    space = parse_space({"knobs": knobs}, "test").resolve(model, example)
    assert space.layers["dw"].knobs["rank"].off and space.layers["dw"].notes[0] == "rank off: a depthwise or grouped conv"
    assert space.layers["head"].knobs["sparsity_mode"].off  # unstructured, as a plan without the knob
    assert "channels kept: the model's output (one per class)" in space.layers["head"].notes
    assert not space.layers["stem"].notes  # every knob applies there


def test_every_numeric_option_has_a_range() -> None:
    """Every int or float a config, flag or task takes is bounded both ways beside its field, so
    a careless value (a negative seed, a million workers) is one line naming the key or flag."""
    import dataclasses
    import typing

    from autocompress.config import StudyConfig

    seen: list[str] = []

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                walk(tp, f"{prefix}{f.name}.")
                continue
            kinds = {a for a in typing.get_args(tp) or (tp,) if a is not type(None)}
            kinds |= {b for a in kinds for b in typing.get_args(a) if b is not Ellipsis}  # tuple[int, ...]
            if kinds & {int, float} and str not in kinds and bool not in kinds:
                seen.append(f"{prefix}{f.name}")
                assert {"min", "max"} <= set(f.metadata) or "choices" in f.metadata, f"{prefix}{f.name} has no documented range"

    walk(StudyConfig, "")
    assert {"search.seed", "search.workers", "search.trials", "finetune.steps", "deploy.threads", "task.seed", "task.batch_size"} <= set(seen)
