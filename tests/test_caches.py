"""Caches are data with a schema: a baseline checkpoint, its sidecar, a partial training
checkpoint or a sensitivity cache that is corrupt or of the wrong types is ignored with one
warning and rebuilt, never a traceback (and, loaded with weights_only, never code)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from autocompress import sensitivity
from autocompress.tasks import TaskSpec, build_task

SPEC = TaskSpec(model="digits-mlp", train_epochs=2)


def _cache_files(folder: Path) -> tuple[Path, Path]:
    (pt,) = [p for p in folder.glob("digits-mlp-*.pt") if ".partial" not in p.name]
    return pt, pt.with_suffix(".json")


BAD_STATES = {
    "garbage bytes": lambda path: path.write_bytes(b"\x80\x02not a checkpoint at all"),
    "a list": lambda path: torch.save([torch.zeros(3)], path),
    "tensors of another model": lambda path: torch.save({"fc1.weight": torch.zeros(2, 2)}, path),
    "not tensors": lambda path: torch.save({"fc1.weight": "x"}, path),
}


@pytest.mark.parametrize("bad", list(BAD_STATES))
def test_a_bad_cached_baseline_is_ignored_and_trained_again(bad: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = build_task(SPEC, tmp_path)
    pt, _ = _cache_files(tmp_path)
    BAD_STATES[bad](pt)
    lines: list[str] = []
    with caplog.at_level(logging.WARNING):
        again = build_task(SPEC, tmp_path, say=lines.append)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "ignoring the cached baseline" in warnings[0] and str(pt) in warnings[0]
    assert any(line.startswith("training the baseline") for line in lines)
    for key, tensor in first.state_dict.items():  # trained again, the same way: the same weights
        assert torch.equal(again.state_dict[key], tensor), key
    assert torch.load(pt, weights_only=True).keys() == first.state_dict.keys()  # and cached again, whole


@pytest.mark.parametrize("sidecar", ['{"trained_by": 5}', '{"trained_by": {"host": ["x"]}}', "[1, 2]", "{not json", '{"trained_by": ' * 5000])
def test_a_bad_sidecar_only_loses_its_label(sidecar: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    build_task(SPEC, tmp_path)
    _, side = _cache_files(tmp_path)
    side.write_text(sidecar)
    task = build_task(SPEC, tmp_path)
    assert task.trained_by == {}
    assert sum("ignoring" in r.getMessage() for r in caplog.records) <= 1


BAD_RESUMES = {
    "garbage": b"\x00\x01garbage",
    "a dict of the wrong keys": {"epoch": 1},
    "epoch past the end": "epoch",
    "another model's weights": "model",
    "an optimizer state of the wrong shapes": "optimizer",
    "a generator state of the wrong size": "generator",
}


@pytest.mark.parametrize("bad", list(BAD_RESUMES))
def test_a_bad_partial_checkpoint_trains_from_the_start(bad: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import dataclasses

    from autocompress.tasks import load_data
    from autocompress.tasks.trainer import make_model, train_epochs

    first = build_task(SPEC, tmp_path)
    pt, _ = _cache_files(tmp_path)
    partial = pt.with_name(f"{pt.stem}.partial.pt")
    data = load_data(SPEC.resolved())
    one_epoch = dataclasses.replace(SPEC.resolved(), train_epochs=1)
    good = next(r["checkpoint"] for r in train_epochs(make_model(one_epoch, data), data, one_epoch, torch.device("cpu")))
    value = BAD_RESUMES[bad]
    if value == "epoch":
        good["epoch"] = 99
    elif value == "model":
        good["model"] = {"fc1.weight": torch.zeros(1)}
    elif value == "optimizer":
        for state in good["optimizer"]["state"].values():
            state["exp_avg"] = torch.zeros(3)
    elif value == "generator":
        good["generator"] = torch.zeros(3, dtype=torch.uint8)
    if isinstance(value, bytes):
        partial.write_bytes(value)
    else:
        torch.save(good if isinstance(value, str) else value, partial)
    pt.unlink()
    lines: list[str] = []
    with caplog.at_level(logging.WARNING):
        again = build_task(SPEC, tmp_path, say=lines.append)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "ignoring the checkpoint" in warnings[0], warnings
    assert not any("resuming" in line for line in lines)
    for key, tensor in first.state_dict.items():
        assert torch.equal(again.state_dict[key], tensor), key
    assert not partial.exists()


GOOD_ROW = {
    "group": "fc1",
    "knob": "bits",
    "value": 4,
    "accuracy": 0.9,
    "drop_points": 1.0,
    "size_bytes": 10,
    "size_delta": -5,
    "latency_ratio": None,
}
BAD_CACHES = {
    "not json": "{",
    "a list": "[]",
    "rows not a list": json.dumps({"reference": {"accuracy": 0.9, "size_bytes": 10}, "rows": {}}),
    "a number as text": json.dumps({"reference": {"accuracy": 0.9, "size_bytes": 10}, "rows": [{**GOOD_ROW, "drop_points": "1.0"}]}),
    "a row missing a field": json.dumps(
        {"reference": {"accuracy": 0.9, "size_bytes": 10}, "rows": [{k: v for k, v in GOOD_ROW.items() if k != "value"}]}
    ),
    "a row with an extra field": json.dumps({"reference": {"accuracy": 0.9, "size_bytes": 10}, "rows": [{**GOOD_ROW, "evil": 1}]}),
    "a reference without accuracy": json.dumps({"reference": {"size_bytes": 10}, "rows": [GOOD_ROW]}),
    "a boolean size": json.dumps({"reference": {"accuracy": 0.9, "size_bytes": 10}, "rows": [{**GOOD_ROW, "size_bytes": True}]}),
}


@pytest.mark.parametrize("bad", list(BAD_CACHES))
def test_a_bad_sensitivity_cache_is_measured_again(bad: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "sensitivity-x.json"
    path.write_text(BAD_CACHES[bad])
    with caplog.at_level(logging.WARNING):
        assert sensitivity.read_cache(path) is None
    assert [r.getMessage() for r in caplog.records if "ignoring the sensitivity cache" in r.getMessage()]


def test_a_genuine_sensitivity_cache_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "sensitivity-x.json"
    row = sensitivity.Row(**GOOD_ROW)
    sensitivity.write_cache(path, {"accuracy": 0.9, "size_bytes": 10, "agreement": {}}, [row])
    assert sensitivity.read_cache(path) == ({"accuracy": 0.9, "size_bytes": 10, "agreement": {}}, [row])
    assert sensitivity.read_cache(tmp_path / "absent.json") is None
