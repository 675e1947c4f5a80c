"""Export a trial's packed model, inspect artifacts, and re-check the front on the test split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.trial import TrialState

from autocompress import artifact
from autocompress.artifact import ArtifactError
from autocompress.errors import StorageError


def trial_artifact(study: optuna.Study, number: int) -> bytes:
    """The packed model a COMPLETE trial evaluated, read from the study's artifact store."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number not in trials:
        last = max(trials) if trials else None
        raise StorageError(f"study '{study.study_name}' has no trial {number} (trials are 0..{last}): pick one from 'autocompress report'")
    trial = trials[number]
    if trial.state != TrialState.COMPLETE:
        reason = trial.user_attrs.get("fail_reason", "")
        raise StorageError(
            f"trial {number} of study '{study.study_name}' is {trial.state.name}{': ' + reason if reason else ''}; "
            "only COMPLETE trials have a model to export"
        )
    artifact_id = trial.user_attrs.get("artifact_id")
    folder = study.user_attrs.get("artifact_dir")
    if not artifact_id or not folder:
        raise StorageError(f"trial {number} of study '{study.study_name}' has no stored artifact; it predates artifact export")
    try:
        with FileSystemArtifactStore(folder).open_reader(artifact_id) as reader:
            data = reader.read()
    except Exception as exc:  # the store raises its own not-found types
        raise ArtifactError(f"the artifact of trial {number} is missing from {folder} ({type(exc).__name__}): was the folder moved?") from None
    artifact.read_header(data, f"trial {number}'s artifact")  # refuse to hand on a damaged file
    return data


def export_trial(study: optuna.Study, number: int, output: str | Path | None) -> Path:
    data = trial_artifact(study, number)
    path = Path(output) if output else Path(f"{study.study_name}-trial{number}.acz")
    artifact.write_atomic(path, data)
    return path


def describe(path: str | Path) -> dict[str, Any]:
    """What an artifact holds: task, plan, per-tensor encodings and sizes."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"cannot read artifact ({path}): {exc.strerror}") from None
    header, payload = artifact.read_header(data, str(path))
    model = artifact.loads(data, str(path))
    tensors = []
    for t in header["tensors"]:
        stored = sum(t[k][1] for k in ("values", "index", "scale") if k in t)
        tensors.append({"name": t["name"], "shape": t["shape"], "kind": t["kind"], "encoding": t.get("enc", "raw"), "bits": t.get("bits"), "bytes": stored})
    return {
        "file": str(path),
        "size_bytes": len(data),
        "unpacked_bytes": len(payload),
        "task": header["task"],
        "plan": header["plan"],
        "channels_removed": header.get("channels_removed", {}),
        "bn_folded": header.get("bn_folded", {}),
        "params": sum(p.numel() for p in model.parameters()),
        "tensors": tensors,
    }


def test_accuracies(study: optuna.Study, numbers: list[int]) -> dict[int, float]:
    """Test-split accuracy of the given trials, computed once and kept in the study.

    Optuna freezes finished trials, so the values live in the study attribute ``test_accuracy``
    (trial number -> accuracy); later reports read them instead of re-evaluating.
    """
    from autocompress.tasks import TaskSpec, evaluate_accuracy, load_data

    stored: dict[str, float] = dict(study.user_attrs.get("test_accuracy", {}))
    missing = [n for n in numbers if str(n) not in stored]
    if missing:
        spec = TaskSpec(**study.user_attrs["task"]).resolved()
        data = load_data(spec)
        for n in missing:
            model = artifact.loads(trial_artifact(study, n), f"trial {n}'s artifact")
            stored[str(n)] = evaluate_accuracy(model, data.x_test, data.y_test)
        study.set_user_attr("test_accuracy", stored)
    return {n: stored[str(n)] for n in numbers}
