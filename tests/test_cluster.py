"""Cluster behaviour with real processes and servers: a two-node Ray cluster started with
``ray start``, PostgreSQL, and faults delivered as real signals."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.helpers import run_cli, write_study_config

pytestmark = pytest.mark.e2e
LOCAL_POSTGRES = "postgresql://autocompress:ci-Pa55word@127.0.0.1:5432/autocompress"


@pytest.fixture(scope="module")
def postgres_url() -> str:
    """The PostgreSQL server .ci/run starts; outside CI, skipped (saying so) when none is up."""
    url = os.environ.get("AUTOCOMPRESS_TEST_POSTGRES", LOCAL_POSTGRES)
    try:
        import sqlalchemy as sa

        sa.create_engine(url, connect_args={"connect_timeout": 3}).connect().close()
    except Exception as exc:
        if os.environ.get("CI"):
            raise AssertionError(f"CI must provide PostgreSQL at {url}: {exc}") from exc
        pytest.skip(f"no PostgreSQL server reachable ({type(exc).__name__}); .ci/run installs and starts one")
    return url


def _config(folder: Path, cache_dir: Path, storage: str, steps: int = 20, **search: object) -> Path:
    return write_study_config(
        folder,
        cache_dir,
        search,
        storage=storage,
        artifact_dir=str(folder / "artifacts"),
        finetune={"steps": steps},
        deploy={"max_seconds": 0.1},
    )


def _states(url: str, name: str) -> list[TrialState]:
    return [t.state for t in optuna.load_study(study_name=name, storage=url).trials]


def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    full = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    full.update({"PYTHONUNBUFFERED": "1", **(env or {})})
    return subprocess.Popen(
        [sys.executable, "-m", "autocompress", *args],
        cwd=cwd,
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # As at a terminal: Ctrl-C interrupts. A suite started in the background (`cmd &` in a
        # script) hands its children SIGINT ignored, and Python then never raises KeyboardInterrupt.
        preexec_fn=_default_sigint,
    )


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _complete_and_running(db: Path) -> bool:
    """Whether the SQLite study has a COMPLETE trial and one RUNNING (a moment to strike)."""
    if not db.exists():
        return False
    with sqlite3.connect(db) as conn:
        try:
            states = {s for (s,) in conn.execute("SELECT state FROM trials")}
        except sqlite3.OperationalError:  # the driver has not created the tables yet
            return False
    return {"COMPLETE", "RUNNING"} <= states


def _driver_mid_trial(tmp_path: Path, cache_dir: Path, trials: int) -> tuple[subprocess.Popen[str], str, Path]:
    """An in-process search (SQLite) caught with one trial done and the next one running."""
    db = tmp_path / "mid.db"
    config = _config(tmp_path, cache_dir, f"sqlite:///{db}", steps=600, trials=trials, workers=0)
    driver = _cli("search", str(config), "--no-progress", cwd=tmp_path)
    _wait_for(lambda: _complete_and_running(db), 300, "a complete and a running trial")
    return driver, f"sqlite:///{db}", config


# ---- PostgreSQL -----------------------------------------------------------------------------


def test_search_on_postgres_never_prints_the_password(tmp_path: Path, cache_dir: Path, postgres_url: str) -> None:
    name = f"pg-{uuid.uuid4().hex[:8]}"
    config = _config(tmp_path, cache_dir, postgres_url, trials=2, workers=0)
    password = postgres_url.split(":")[2].split("@")[0]
    proc = run_cli("search", str(config), "--name", name, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.replace(password, "***")
    report = run_cli("report", name, "--storage", postgres_url, cwd=tmp_path)
    dashboard_err = run_cli("report", "missing-" + name, "--storage", postgres_url, cwd=tmp_path)
    assert _states(postgres_url, name) == [TrialState.COMPLETE] * 2
    for out in (proc.stdout, proc.stderr, report.stdout, report.stderr, dashboard_err.stdout, dashboard_err.stderr):
        assert password not in out
    assert "***" in dashboard_err.stderr  # the URL is named, masked
    # Nor does it land in the database: every attribute table, read as text.
    import sqlalchemy as sa

    with sa.create_engine(postgres_url).connect() as conn:
        for table in ("study_user_attributes", "study_system_attributes", "trial_user_attributes", "trial_system_attributes"):
            values = [v for (v,) in conn.execute(sa.text(f"SELECT value_json FROM {table}"))]
            assert values and not any(password in v for v in values), table


def test_two_drivers_on_one_postgres_study_finish_exactly_the_target(tmp_path: Path, cache_dir: Path, postgres_url: str) -> None:
    name = f"pg2-{uuid.uuid4().hex[:8]}"
    config = _config(tmp_path, cache_dir, postgres_url, trials=6, workers=0)
    drivers = [_cli("search", str(config), "--name", name, "--no-progress", cwd=tmp_path) for _ in range(2)]
    outputs = [d.communicate(timeout=600) for d in drivers]
    assert [d.returncode for d in drivers] == [0, 0], [err for _, err in outputs]
    study = optuna.load_study(study_name=name, storage=postgres_url)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 6 and not study.get_trials(states=(TrialState.RUNNING,))
    assert len({t.user_attrs["driver_id"] for t in complete}) == 2  # both drivers did work


# ---- a two-node Ray cluster ---------------------------------------------------------------------


@contextlib.contextmanager
def _two_nodes(second_node_args: tuple[str, ...] = ()):
    """``ray start --head`` plus a second ``ray start --address``: two nodes, one CPU each.

    Token authentication stays on: every process of the cluster runs with RAY_AUTH_MODE=token.
    Each node runs in its own process group and is ended by that group's id alone, so other Ray
    processes on the machine are left running.
    """
    port = 26000 + os.getpid() % 1000
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    ray_bin = str(Path(sys.executable).parent / "ray")
    common = ["--num-cpus", "1", "--disable-usage-stats", "--block"]
    head = subprocess.Popen(
        [ray_bin, "start", "--head", "--port", str(port), "--include-dashboard", "false", *common],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    procs = [head]
    try:
        time.sleep(6)
        procs.append(
            subprocess.Popen(
                [ray_bin, "start", "--address", f"127.0.0.1:{port}", *common, *second_node_args],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        time.sleep(6)
        yield f"127.0.0.1:{port}"
    finally:
        for p in reversed(procs):
            os.killpg(p.pid, signal.SIGTERM)  # --block: the node's processes stop with it
        grace = time.monotonic() + 5  # a graceful stop drains for half a minute: not needed here
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.1, grace - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)  # the group's processes, and only those
            p.wait(timeout=30)


@pytest.fixture
def ray_cluster():
    with _two_nodes() as address:
        yield address


def _nodes_with(address: str, resource: str) -> list[str]:
    """Node ids of the cluster's nodes that hold ``resource``, asked of Ray in a fresh process."""
    script = f"import ray; ray.init(address={address!r}, logging_level='ERROR'); print(' '.join(n['NodeID'] for n in ray.nodes() if n['Alive'] and n['Resources'].get({resource!r})))"
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120, check=True).stdout
    return out.split()


def test_deploy_resource_times_every_trial_on_the_node_that_has_it(tmp_path: Path, cache_dir: Path) -> None:
    with _two_nodes(("--resources", '{"edge-box": 1}')) as address:
        db = tmp_path / "e.db"
        config = write_study_config(
            tmp_path,
            cache_dir,
            {"trials": 2, "workers": 2},  # one trial per worker: one per node
            storage=f"sqlite:///{db}",
            artifact_dir=str(tmp_path / "artifacts"),
            finetune={"steps": 60},
            deploy={"max_seconds": 0.1, "resource": "edge-box", "runtime": "onnxruntime"},
        )
        proc = run_cli("search", str(config), "--ray-address", address, cwd=tmp_path, env={"RAY_AUTH_MODE": "token"})
        assert proc.returncode == 0, proc.stderr
        (edge,) = _nodes_with(address, "edge-box")
    study = optuna.load_study(study_name="autocompress", storage=f"sqlite:///{db}")
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 2
    assert {t.user_attrs["metrics"]["latency_node"] for t in trials} == {edge}  # every trial timed there
    assert study.user_attrs["baseline"]["latency_node"] == edge
    assert len({t.user_attrs["node_id"] for t in trials}) == 2  # while both nodes fine-tuned
    assert "on 'edge-box' nodes" in study.user_attrs["baseline"]["deploy"]


def test_search_on_a_two_node_cluster_uses_both_nodes(tmp_path: Path, cache_dir: Path, ray_cluster: str) -> None:
    config = _config(tmp_path, cache_dir, f"sqlite:///{tmp_path / 'c.db'}", steps=80, trials=4, workers=2)
    proc = run_cli("search", str(config), "--ray-address", ray_cluster, cwd=tmp_path, env={"RAY_AUTH_MODE": "token"})
    assert proc.returncode == 0, proc.stderr
    study = optuna.load_study(study_name="autocompress", storage=f"sqlite:///{tmp_path / 'c.db'}")
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 4
    assert len({t.user_attrs["node_id"] for t in trials}) == 2  # evaluated on both nodes
    assert all(t.user_attrs["worker"]["host"] for t in trials)


# ---- faults -------------------------------------------------------------------------------------


def _descendants(root: int) -> set[int]:
    """Every process below ``root`` (a local Ray's raylet and workers descend from its driver)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _actor_pids(driver: subprocess.Popen[str], method: str) -> list[int]:
    """This search's Ray workers now running ``EvaluatorActor.METHOD`` (Ray titles a worker
    after what it runs); processes of any other Ray on the machine are never touched."""
    out = subprocess.run(["pgrep", "-f", f"ray::EvaluatorActor.{method}"], capture_output=True, text=True).stdout
    mine = _descendants(driver.pid)
    return [int(p) for p in out.split() if int(p) in mine]


def test_a_killed_worker_is_replaced_and_its_trial_retried(tmp_path: Path, cache_dir: Path) -> None:
    db = tmp_path / "k.db"
    config = _config(tmp_path, cache_dir, f"sqlite:///{db}", steps=1500, trials=3, workers=2, max_retries=1)
    driver = _cli("search", str(config), "--no-progress", cwd=tmp_path)
    _wait_for(lambda: bool(_actor_pids(driver, "evaluate")), 120, "a worker to start evaluating")
    os.kill(_actor_pids(driver, "evaluate")[0], signal.SIGKILL)
    _out, err = driver.communicate(timeout=600)
    assert driver.returncode == 0, err
    study = optuna.load_study(study_name="autocompress", storage=f"sqlite:///{db}")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3  # nothing lost
    assert any(t.user_attrs["worker"].get("attempts") == 2 for t in study.trials)


def test_a_worker_killed_during_the_baseline_is_replaced_and_the_baseline_measured(tmp_path: Path, cache_dir: Path) -> None:
    db = tmp_path / "b.db"
    config = write_study_config(
        tmp_path,
        cache_dir,
        {"trials": 1, "workers": 1, "max_retries": 1},
        storage=f"sqlite:///{db}",
        artifact_dir=str(tmp_path / "artifacts"),
        finetune={"steps": 5},
        deploy={"max_seconds": 3.0},
    )
    driver = _cli("search", str(config), "--no-progress", cwd=tmp_path)
    _wait_for(lambda: bool(_actor_pids(driver, "baseline")), 180, "the baseline to start")
    os.kill(_actor_pids(driver, "baseline")[0], signal.SIGKILL)
    _, err = driver.communicate(timeout=600)
    assert driver.returncode == 0 and "Traceback" not in err, err
    study = optuna.load_study(study_name="autocompress", storage=f"sqlite:///{db}")
    assert study.user_attrs["baseline"]["latency_ms"] > 0
    assert [t.state for t in study.trials] == [TrialState.COMPLETE]


def test_a_trial_over_its_timeout_is_failed_with_the_reason(tmp_path: Path, cache_dir: Path) -> None:
    db = tmp_path / "t.db"
    config = _config(tmp_path, cache_dir, f"sqlite:///{db}", steps=5000, trials=2, workers=1, trial_timeout=2, max_failures_in_a_row=2)
    proc = run_cli("search", str(config), "--no-progress", cwd=tmp_path)
    assert proc.returncode == 2 and "2 trials in a row failed" in proc.stderr
    study = optuna.load_study(study_name="autocompress", storage=f"sqlite:///{db}")
    failed = study.get_trials(states=(TrialState.FAIL,))
    timed_out = [t for t in failed if t.user_attrs["fail_reason"].startswith("timed out after 2 s")]
    assert len(timed_out) == 2
    # A trial already started when the search stopped is failed with that reason, not left RUNNING.
    assert all(t.user_attrs["fail_reason"].startswith("search stopped") for t in failed if t not in timed_out)
    assert not study.get_trials(states=(TrialState.RUNNING,))


def test_a_killed_driver_leaves_nothing_running_after_resume(tmp_path: Path, cache_dir: Path) -> None:
    driver, url, config = _driver_mid_trial(tmp_path, cache_dir, trials=4)
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)
    killed = [t for t in optuna.load_study(study_name="autocompress", storage=url).trials if t.state == TrialState.RUNNING]
    assert len(killed) == 1
    proc = run_cli("search", str(config), "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    study = optuna.load_study(study_name="autocompress", storage=url)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 4
    assert not study.get_trials(states=(TrialState.RUNNING,))
    dead = study.trials[killed[0].number]
    assert dead.state == TrialState.FAIL and "died" in dead.user_attrs["fail_reason"]
    requeued = [t for t in study.trials if t.user_attrs.get("requeued_from") == dead.number]
    # The re-queued trial keeps every parameter the dead one had drawn (it may have been killed
    # while sampling, before drawing them all).
    assert len(requeued) == 1 and requeued[0].state == TrialState.COMPLETE
    assert dead.params.items() <= requeued[0].params.items()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_fails_in_flight_trials_prints_the_report_and_exits_130(tmp_path: Path, cache_dir: Path, sig: signal.Signals) -> None:
    driver, url, _ = _driver_mid_trial(tmp_path, cache_dir, trials=5)
    driver.send_signal(sig)
    out, err = driver.communicate(timeout=60)
    assert driver.returncode == 130, (err, out[-600:])
    assert "Pareto front" in out and "interrupted" in err and "Traceback" not in err
    study = optuna.load_study(study_name="autocompress", storage=url)
    assert not study.get_trials(states=(TrialState.RUNNING,))
    assert any(t.user_attrs.get("fail_reason") == "interrupted" for t in study.get_trials(states=(TrialState.FAIL,)))
