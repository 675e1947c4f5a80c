"""The baseline trained where the work runs: a line per epoch, a checkpoint that lets a stopped
run resume to the very weights of an uninterrupted one, and no half-written cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from autocompress.tasks import TaskSpec, build_task
from autocompress.tasks import trainer as training_module
from autocompress.tasks.trainer import local_trainer

SPEC = TaskSpec(model="digits-mlp", train_epochs=6)


def _stopping_after(epochs: int):  # type: ignore[no-untyped-def]
    """A trainer interrupted (as by Ctrl-C) when epoch ``epochs + 1`` would be reported."""

    def train(spec, data, state, resume):  # type: ignore[no-untyped-def]
        for report in local_trainer(torch.device("cpu"))(spec, data, state, resume):
            if report.get("epoch") == epochs + 1:
                raise KeyboardInterrupt
            yield report

    return train


def test_a_baseline_stopped_midway_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = build_task(SPEC, tmp_path / "whole")
    monkeypatch.setattr(training_module, "CHECKPOINT_EVERY_S", 0.0)  # a checkpoint after every epoch
    with pytest.raises(KeyboardInterrupt):
        build_task(SPEC, tmp_path / "stopped", trainer=_stopping_after(3))
    files = sorted(p.name for p in (tmp_path / "stopped").iterdir())
    assert len(files) == 1 and files[0].endswith(".partial.pt")  # no cache yet, no temporary file left
    lines: list[str] = []
    resumed = build_task(SPEC, tmp_path / "stopped", say=lines.append)
    assert any("resuming after epoch 3" in line for line in lines)
    epochs = [line for line in lines if "validation accuracy" in line]
    assert epochs[0].lstrip().startswith("epoch 4/6") and epochs[-1].lstrip().startswith("epoch 6/6")
    assert whole.state_dict.keys() == resumed.state_dict.keys()
    assert all(torch.equal(whole.state_dict[k], resumed.state_dict[k]) for k in whole.state_dict)
    assert sorted(p.suffix for p in (tmp_path / "stopped").iterdir()) == [".json", ".pt"]  # the partial checkpoint is gone
    assert resumed.trained_by["device"] == "cpu"


def test_an_unreadable_checkpoint_is_set_aside_and_training_starts_over(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = tmp_path / "cache"
    build_task(SPEC, cache)
    (trained,) = cache.glob("*[0-9a-f].pt")
    trained.with_name(f"{trained.stem}.partial.pt").write_bytes(b"not a checkpoint")
    trained.unlink()
    build_task(SPEC, cache)
    assert any("ignoring the checkpoint" in r.getMessage() and "unreadable" in r.getMessage() for r in caplog.records)
    assert not list(cache.glob("*.partial.pt")) and trained.is_file()
