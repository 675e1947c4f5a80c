"""Trust beyond files: code named in a study database never runs unasked, and credentials in
any URL the tool takes never reach an output, a log line or a stored attribute."""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path

import optuna
import pytest

from tests.helpers import run_cli

RAY_SECRET = "Zq9SecretRay"
PLANTED = """
from pathlib import Path
Path(__file__).with_name("imported.marker").write_text("planted code ran")

def build():
    from autocompress.tasks.digits import DigitsMLP
    return DigitsMLP()

def make():
    raise SystemExit("the task function must never run here")
"""


@pytest.fixture(scope="module")
def study_folder(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """A finished search of digits-mlp whose config names a Ray address with credentials (unused:
    workers 0, but stored with the study's config)."""
    folder = tmp_path_factory.mktemp("trust")
    (folder / "study.yaml").write_text(
        f"name: trust\nstorage: sqlite:///{folder / 's.db'}\ncache_dir: {cache_dir}\nartifact_dir: {folder / 'artifacts'}\n"
        "task: {model: digits-mlp}\n"
        f"search: {{trials: 2, workers: 0, seed: 0, sensitivity: false, ray_address: 'ray://alice:{RAY_SECRET}@127.0.0.1:10001'}}\n"
        "finetune: {steps: 5}\ndeploy: {max_seconds: 0.05}\n"
    )
    proc = run_cli("search", str(folder / "study.yaml"), "--no-progress", cwd=folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (folder / "search.out").write_text(proc.stdout + proc.stderr)
    return folder


def _database_text(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return "\n".join(repr(row) for t in tables for row in conn.execute(f'SELECT * FROM "{t}"'))


def test_a_ray_address_with_credentials_is_masked_everywhere(study_folder: Path) -> None:
    study = optuna.load_study(study_name="trust", storage=f"sqlite:///{study_folder / 's.db'}")
    assert study.user_attrs["config"]["search"]["ray_address"] == "ray://alice:***@127.0.0.1:10001"
    assert RAY_SECRET not in _database_text(study_folder / "s.db")
    assert RAY_SECRET not in (study_folder / "search.out").read_text()
    report = run_cli("report", "trust", "--storage", f"sqlite:///{study_folder / 's.db'}", "--json", cwd=study_folder)
    assert report.returncode == 0 and RAY_SECRET not in report.stdout + report.stderr


def test_masking_holds_whatever_the_password_holds() -> None:
    from autocompress.storage import mask_url

    for url, secret in (
        ("postgresql://bob:p@ss@host:5432/db", "p@ss"),
        ("postgresql://bob:p/a@ss@host/db", "p/a@ss"),
        ("postgresql://bob:p%40ss@host/db?sslmode=require", "p%40ss"),
        ("postgresql://host/db?user=bob&password=Zq1query", "Zq1query"),
        ("ray://alice:Zq2ray@head:10001", "Zq2ray"),
        ("alice:Zq3bare@head:6379", "Zq3bare"),
        ("http://carol:Zq4dash@127.0.0.1:8080/", "Zq4dash"),
    ):
        masked = mask_url(url)
        assert secret not in masked and "***" in masked, (url, masked)
    assert mask_url("sqlite:///runs/a@b.db") == "sqlite:///runs/a@b.db"  # a file path is not a credential


def test_code_named_in_the_database_never_runs_unasked(study_folder: Path, tmp_path: Path) -> None:
    """Whoever can write a shared study database can name any module:function as its task's
    model or build hook; export and report --recheck import it only when the person running the
    command names it too."""
    url = f"sqlite:///{study_folder / 's.db'}"
    study = optuna.load_study(study_name="trust", storage=url)
    task = dict(study.user_attrs["task"])
    study.set_user_attr("task", {**task, "model": "planted:make", "build": "planted:build"})
    study.set_user_attr("test_accuracy", {})  # so that --recheck has trials to rebuild
    (tmp_path / "planted.py").write_text(PLANTED)
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    knee = next(t.number for t in study.best_trials)
    asks = {
        "export": ("export", "trust", "--trial", str(knee), "--format", "onnx", "-o", str(tmp_path / "m.onnx"), "--storage", url),
        "report --recheck": ("report", "trust", "--recheck", "--storage", url),
    }
    for name, args in asks.items():
        proc = run_cli(*args, cwd=tmp_path, env=env)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (name, proc.stderr)
        assert "--code planted:build --code planted:make" in lines[0], lines[0]
        assert not (tmp_path / "imported.marker").exists(), f"{name} imported code the database named"
    assert not (tmp_path / "m.onnx").exists()
    # Named by the person running it: the build hook runs (the task function never does).
    proc = run_cli(*asks["export"], "--code", "planted:build", "--code", "planted:make", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "imported.marker").exists() and (tmp_path / "m.onnx").stat().st_size > 0
