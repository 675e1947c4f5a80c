"""Artifact files of a study: written whole or not at all, listed only once complete, removed
with the study.

Files live in the study's recorded ``artifact_dir`` under Optuna's artifact ids, where
optuna-dashboard and ``export`` read them. A file is first written as
``.partial-HOST-PID-ID``, synced and renamed into place, and only then listed on its study or
trial: a process killed mid-write leaves a partial file, never a listed one that is missing or
short. A later driver on the same host removes the partial files of processes that are gone.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import optuna
from optuna.artifacts import ArtifactMeta, get_all_artifact_meta

from autocompress import _faults, _optuna
from autocompress._proc import pid_alive
from autocompress.errors import ArtifactError, StorageError
from autocompress.outputs import write_then_rename

PARTIAL = ".partial-"
MAX_READ_BYTES = 4 << 30  # an artifact folder is shared: a planted huge file is not read whole


def _path(artifact_dir: str, artifact_id: str) -> Path:
    """The file of an id read from the database, which anyone with write access can edit: only
    an Optuna id (a UUID) names a file, so an id never reaches outside the folder."""
    try:
        canonical = str(uuid.UUID(artifact_id))
    except (ValueError, TypeError, AttributeError):
        canonical = None
    if canonical != artifact_id:
        raise ArtifactError(f"artifact id {artifact_id!r} in the study is not an artifact id: the database was edited by hand")
    return Path(artifact_dir) / artifact_id


def write_artifact(data: bytes, artifact_dir: str, name: str, mimetype: str) -> ArtifactMeta:
    """Write ``data`` whole into the study's artifact folder; its meta, for listing once written."""
    folder = Path(artifact_dir)
    artifact_id = str(uuid.uuid4())
    tmp = folder / f"{PARTIAL}{socket.gethostname()}-{os.getpid()}-{artifact_id}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_then_rename(tmp, data, folder / artifact_id, midway=lambda: _faults.checkpoint("artifact-write"))
    except OSError as exc:
        raise StorageError(
            f"cannot write artifacts to {artifact_dir} ({exc.strerror or exc}): "
            "free disk space or fix permissions, then run the same command to resume"
        ) from None
    return ArtifactMeta(artifact_id=artifact_id, filename=name, mimetype=mimetype, encoding=None)


def store_artifact(owner: optuna.Trial | optuna.Study, data: bytes, artifact_dir: str, name: str, mimetype: str) -> str:
    """Write ``data`` into the study's artifact folder and list it on ``owner``; its id."""
    meta = write_artifact(data, artifact_dir, name, mimetype)
    _optuna.register_artifact(owner, meta)
    return meta.artifact_id


def remove_partials(artifact_dir: str) -> int:
    """Remove the partial files that processes on this host, now gone, left; how many."""
    folder = Path(artifact_dir)
    if not folder.is_dir():
        return 0
    prefix = f"{PARTIAL}{socket.gethostname()}-"
    removed = 0
    for path in folder.glob(f"{prefix}*"):
        pid = path.name[len(prefix) :].partition("-")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def listed_ids(study: optuna.Study) -> list[str]:
    """Every artifact listed on the study or on one of its trials."""
    storage = _optuna.storage_of(study)
    ids = [m.artifact_id for m in get_all_artifact_meta(study)]
    for trial in study.get_trials(deepcopy=False):
        ids += [m.artifact_id for m in get_all_artifact_meta(trial, storage=storage)]
    return ids


def artifact_paths(artifact_dir: str, ids: list[str]) -> list[Path]:
    """The files of these ids, every id checked first (a hand-edited one is refused)."""
    return [_path(artifact_dir, artifact_id) for artifact_id in ids]


def remove_artifacts(paths: list[Path]) -> int:
    """Remove these artifact files (those already gone are skipped); how many were removed."""
    removed = 0
    for path in paths:
        if path.is_file():
            path.unlink()
            removed += 1
    return removed


def read_artifact(artifact_dir: str, artifact_id: str, what: str) -> bytes:
    """The bytes of a stored artifact; ``what`` names it in errors (e.g. "trial 3's artifact")."""
    path = _path(artifact_dir, artifact_id)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_READ_BYTES + 1)
    except OSError as exc:
        raise ArtifactError(f"{what} cannot be read from {artifact_dir} ({exc.strerror}): was the folder moved?") from None
    if len(data) > MAX_READ_BYTES:
        raise ArtifactError(f"{what} in {artifact_dir} is larger than {MAX_READ_BYTES >> 30} GiB: the file was replaced")
    return data
