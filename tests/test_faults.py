"""Faults a real run meets, delivered for real: a SIGKILL at each stage of a search, a full disk
(a small tmpfs), two processes creating one new database at once, and where a local Ray listens."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
from optuna.artifacts import get_all_artifact_meta
from optuna.trial import TrialState

from autocompress import _faults, artifact
from tests.helpers import REPO, run_cli, write_study_config

pytestmark = pytest.mark.e2e


def _config(folder: Path, cache_dir: Path, trials: int = 1, artifact_dir: Path | None = None, db: Path | None = None) -> Path:
    return write_study_config(
        folder,
        cache_dir,
        {"trials": trials, "workers": 0},
        storage=f"sqlite:///{db or folder / 's.db'}",
        artifact_dir=str(artifact_dir or folder / "artifacts"),
        finetune={"steps": 5},
        deploy={"max_seconds": 0.05},
    )


def _listed_files(url: str, folder: Path) -> tuple[set[str], set[str]]:
    """(artifact ids listed on the study and its trials, file names in the artifact folder)."""
    study = optuna.load_study(study_name="autocompress", storage=url)
    listed = {m.artifact_id for m in get_all_artifact_meta(study)}
    for t in study.get_trials(deepcopy=False):
        listed |= {m.artifact_id for m in get_all_artifact_meta(t, storage=study._storage)}
    files = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    return listed, files


# The 2nd artifact write is trial 0's packed model (the 1st is the baseline's).
@pytest.mark.parametrize("stage", [*_faults.STAGES, "artifact-write:2"])
def test_a_search_killed_at_any_stage_resumes_to_a_whole_study(tmp_path: Path, cache_dir: Path, stage: str) -> None:
    config = _config(tmp_path, cache_dir)
    url, folder = f"sqlite:///{tmp_path / 's.db'}", tmp_path / "artifacts"
    killed = run_cli("search", str(config), "--no-progress", cwd=tmp_path, env={"AUTOCOMPRESS_KILL_AT": stage})
    assert killed.returncode == -9, killed.stderr  # really killed there, not finished or failed
    listed, files = _listed_files(url, folder)
    # What a kill leaves: never a listed artifact that is missing; at most a partial file.
    assert listed <= files
    assert all(name.startswith(".partial-") for name in files - listed)
    if stage.startswith("artifact-write"):
        assert len(files - listed) == 1  # killed mid-write indeed

    proc = run_cli("search", str(config), "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    study = optuna.load_study(study_name="autocompress", storage=url)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 1
    assert not study.get_trials(states=(TrialState.RUNNING,))
    assert {"task", "space", "config", "artifact_dir", "baseline"} <= set(study.user_attrs)
    assert study.metric_names == ["accuracy", "size_bytes", "latency_ms"]
    listed, files = _listed_files(url, folder)
    assert listed <= files and not [f for f in files if f.startswith(".partial-")]
    # Every listed packed model is whole: its header and every tensor read back.
    packed = [m.artifact_id for t in study.trials for m in get_all_artifact_meta(t, storage=study._storage) if m.filename.endswith(".acz")]
    packed += [m.artifact_id for m in get_all_artifact_meta(study) if m.filename.endswith(".acz")]
    assert len(packed) == 2
    for artifact_id in packed:
        header, payload = artifact.read_header((folder / artifact_id).read_bytes(), artifact_id)
        assert len(list(artifact.decode_tensors(header, payload))) == len(header["tensors"])


@pytest.fixture
def tiny_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A 2 MiB tmpfs: a disk that fills up. Mounting needs root; skipped (saying so) without."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; CI runs as root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path) -> Path:
    """Fill the disk under ``folder`` to the last byte; the filler file."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
        try:
            while True:
                f.write(b"\0")
        except OSError:
            pass
    return filler


def test_a_full_disk_stops_the_search_with_one_line_and_it_resumes_once_freed(tmp_path: Path, cache_dir: Path, tiny_disk: Path) -> None:
    arts = tiny_disk / "artifacts"
    arts.mkdir()
    config = _config(tmp_path, cache_dir, trials=2, artifact_dir=arts)
    url = f"sqlite:///{tmp_path / 's.db'}"
    filler = _fill(tiny_disk)
    proc = run_cli("search", str(config), "--no-progress", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [
        f"error: cannot write artifacts to {arts} (No space left on device): free disk space or fix permissions, then run the same command to resume"
    ]
    assert not list(arts.iterdir())  # nothing half-written
    study = optuna.load_study(study_name="autocompress", storage=url)
    assert "baseline" not in study.user_attrs and not study.get_trials(states=(TrialState.RUNNING,))

    filler.unlink()
    proc = run_cli("search", str(config), "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    study = optuna.load_study(study_name="autocompress", storage=url)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 2
    listed, files = _listed_files(url, arts)
    assert listed == files and len(files) == 3


def test_a_database_on_a_full_disk_is_one_line_and_left_as_it_was(tmp_path: Path, cache_dir: Path, tiny_disk: Path) -> None:
    db = tiny_disk / "s.db"
    config = _config(tmp_path, cache_dir, db=db)
    _fill(tiny_disk)
    proc = run_cli("search", str(config), "--no-progress", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(db) in errors[0] and "full" in errors[0], proc.stderr


RACE = textwrap.dedent("""
    import sys, time
    from autocompress import tables
    from autocompress.storage import open_storage, retry_creation
    folder, start = sys.argv[1], float(sys.argv[2])
    for k in range(3):  # three new databases, all processes at each at the same instant
        while time.time() < start + k:
            pass
        storage = open_storage(f"sqlite:///{folder}/race-{k}.db")
        retry_creation(lambda: tables.ensure_schema(storage.engine))
    print("ok")
""")


def test_processes_creating_one_new_database_at_once_all_succeed(tmp_path: Path) -> None:
    start = time.time() + 10  # past every process's imports
    procs = [
        subprocess.Popen([sys.executable, "-c", RACE, str(tmp_path), str(start)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err[-500:] for _, err in outs]
    for k in range(3):
        with sqlite3.connect(tmp_path / f"race-{k}.db") as conn:
            assert conn.execute("SELECT COUNT(*) FROM alembic_version").fetchone()[0] == 1
            assert conn.execute("SELECT COUNT(*) FROM autocompress_schema").fetchone()[0] == 1


SEARCH_RAY = textwrap.dedent("""
    import sys
    import ray
    from autocompress.deploy.target import DeployConfig
    from autocompress.runners.ray import RayRunner
    runner = RayRunner(workers=1)
    runner.connect(DeployConfig())
    print(ray.get_runtime_context().gcs_address, flush=True)
    sys.stdin.readline()  # until the test is done
    runner.close()
""")
INTRUDER = textwrap.dedent("""
    import sys
    import ray
    try:
        ray.init(address=sys.argv[1], logging_level="ERROR")
        print("joined")
    except ConnectionError as exc:
        print("refused")
""")


def test_the_local_ray_a_search_starts_refuses_a_client_without_its_token(tmp_path: Path) -> None:
    """Ray 2.60 listens on every interface (it resolves loopback to the host's address), so what
    keeps other machines out of a search's local Ray is its token authentication, kept on."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    env["PYTHONPATH"] = str(REPO)
    search = subprocess.Popen(
        [sys.executable, "-c", SEARCH_RAY], cwd=tmp_path, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        address = search.stdout.readline().strip()  # type: ignore[union-attr]
        assert address, "the search's Ray did not start"
        elsewhere = tmp_path / "elsewhere"  # another user's home: no token file
        elsewhere.mkdir()
        proc = subprocess.run(
            [sys.executable, "-c", INTRUDER, address], cwd=tmp_path, env={**env, "HOME": str(elsewhere)}, capture_output=True, text=True, timeout=180
        )
        assert proc.stdout.strip().splitlines()[-1] == "refused", proc.stdout + proc.stderr[-1000:]
        assert "InvalidAuthToken" in proc.stderr  # refused for the token, not for being unreachable
    finally:
        search.communicate("\n", timeout=60)


def test_the_dashboard_on_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    import socket

    optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 's.db'}")
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        proc = run_cli("dashboard", "--storage", f"sqlite:///{tmp_path / 's.db'}", "--port", str(port), cwd=tmp_path, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"error: port {port} on 127.0.0.1 is in use (--port): pick another port, or stop what holds it"
