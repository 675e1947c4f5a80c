"""Deleting a study whole: the Optuna study, its rows in autocompress's own tables and its
artifact files. Every file is found and checked before anything is deleted."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import optuna

from autocompress import _optuna, tables
from autocompress.artifact_store import artifact_paths, listed_ids, remove_artifacts
from autocompress.storage import load_study, open_storage


@dataclass
class Deletion:
    """What deleting one study removes, found before anything is removed."""

    name: str
    storage: optuna.storages.RDBStorage
    trials: int
    listed: int  # artifact ids listed on the study or a trial (failed trials' included)
    paths: list[Path]  # their files, when the study records its folder
    folder: str | None

    def describe(self) -> str:
        where = f" in {self.folder}" if self.folder and self.listed else ""
        return f"study '{self.name}' ({self.trials} trials, {self.listed} artifact files{where})"

    def run(self) -> tuple[int, int]:
        """Delete it; the rows of autocompress's tables and the files removed."""
        study_id = self.storage.get_study_id_from_name(self.name)
        rows = tables.delete_study_rows(self.storage.engine, study_id)
        optuna.delete_study(study_name=self.name, storage=self.storage)
        return rows, remove_artifacts(self.paths)


def plan_deletion(url: str, name: str) -> Deletion:
    """The deletion of study ``name`` in the storage at ``url``, checked, nothing removed yet."""
    storage = open_storage(url, create=False)
    study = load_study(storage, name, url)
    ids = listed_ids(study)
    folder = study.user_attrs.get("artifact_dir")
    paths = artifact_paths(folder, ids) if folder else []
    return Deletion(name, storage, sum(_optuna.state_counts(study).values()), len(ids), paths, folder)
