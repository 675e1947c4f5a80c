"""The bad-input corpus: every file in tests/bad_inputs/ is one user mistake.

Each case writes its files into a fresh folder, runs the CLI against a database that already
holds studies, and asserts: exit code 2, exactly one line ``error: ...`` that names the
offending key, file or layer (``expect``), no traceback, no secret (``forbid``), and not one
row added or changed in the database.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from autocompress.cli import main
from autocompress.config import load_config
from autocompress.driver import run_search

CORPUS = sorted((Path(__file__).parent / "bad_inputs").glob("*.yaml"))
CASE_KEYS = {"mistake", "args", "files", "expect", "forbid"}


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """A database with a real autocompress study (2 complete trials and a failed one), a study of
    another tool (one objective), one with other directions and an empty one."""
    folder = tmp_path_factory.mktemp("populated")
    url = f"sqlite:///{folder / 'studies.db'}"
    (folder / "good.yaml").write_text(
        f"name: good\nstorage: {url}\ncache_dir: {cache_dir}\nartifact_dir: {folder / 'artifacts'}\n"
        "search: {trials: 2, workers: 0, seed: 0}\nfinetune: {steps: 5}\ndeploy: {max_seconds: 0.05}\n"
    )
    study = run_search(load_config(folder / "good.yaml"), progress=False)
    trial = study.ask()
    trial.set_user_attr("fail_reason", "worker lost")
    study.tell(trial, state=TrialState.FAIL)
    other = optuna.create_study(study_name="other-tool", storage=url)
    other.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    optuna.create_study(study_name="other-directions", storage=url, directions=["minimize"] * 3)
    empty = optuna.create_study(study_name="empty", storage=url, directions=["maximize", "minimize", "minimize"])
    empty.set_metric_names(["accuracy", "size_bytes", "latency_ms"])
    return folder


def _row_counts(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: conn.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0] for t in tables}


def test_corpus_is_large_and_well_formed() -> None:
    assert len(CORPUS) >= 30
    for path in CORPUS:
        case = yaml.safe_load(path.read_text())
        assert set(case) <= CASE_KEYS and {"args", "expect"} <= set(case), path.name


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_bad_input(path: Path, populated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    case = yaml.safe_load(path.read_text())
    fill = {"{dir}": str(tmp_path), "{storage}": f"sqlite:///{populated / 'studies.db'}", "{db}": str(populated / "studies.db")}

    def expand(text: str) -> str:
        for k, v in fill.items():
            text = text.replace(k, v)
        return text

    for name, body in (case.get("files") or {}).items():
        (tmp_path / name).write_text(expand(body))
    before = _row_counts(populated / "studies.db")
    artifacts_before = sorted((populated / "artifacts").rglob("*"))
    capsys.readouterr()
    code = main([expand(a) for a in case["args"]])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expand(case["expect"]) in lines[0]
    assert "Traceback" not in err
    if "forbid" in case:
        assert case["forbid"] not in err
    assert _row_counts(populated / "studies.db") == before  # nothing written, not even a study
    assert sorted((populated / "artifacts").rglob("*")) == artifacts_before
    assert not list(tmp_path.glob("*.db")) and not (tmp_path / "studies").exists()
    assert not [p for p in tmp_path.glob("*.html") if p.name not in (case.get("files") or {})]  # no half-written report either
    for name, body in (case.get("files") or {}).items():
        assert (tmp_path / name).read_text() == expand(body)  # an existing file is never replaced
