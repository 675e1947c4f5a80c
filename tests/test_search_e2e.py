"""Real searches: the CLI with its own local Ray and a SQLite file, the Python API, resumption."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from autocompress import artifact
from autocompress.cli import main
from autocompress.config import load_config
from autocompress.driver import Driver, run_search
from autocompress.errors import SearchError
from autocompress.pareto import dominates, study_analysis
from autocompress.plan import CompressionPlan, Result
from autocompress.runners import LocalRunner
from autocompress.stats import unpack_correct
from tests.helpers import ARTIFACTS, REPO, chromium, run_cli, write_study_config

pytestmark = pytest.mark.e2e


def _write_config(folder: Path, cache_dir: Path, **search: object) -> Path:
    return write_study_config(
        folder,
        cache_dir,
        search,
        name="e2e",
        storage=f"sqlite:///{folder / 'e2e.db'}",
        task={"model": "digits-cnn"},
        finetune={"steps": 40},
        deploy={"max_seconds": 0.2},
        pareto={"max_accuracy_drop": 2.0},
    )


@pytest.fixture(scope="module")
def cli_study(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """One real CLI search: 4 trials on 2 local Ray workers into a SQLite file."""
    folder = tmp_path_factory.mktemp("cli")
    config = _write_config(folder, cache_dir, trials=4, workers=2, seed=1)
    proc = run_cli("search", str(config), cwd=folder)
    assert proc.returncode == 0, proc.stderr
    assert "Pareto front" in proc.stdout
    (folder / "search-stdout.txt").write_text(proc.stdout)
    return folder


def test_search_says_each_step_as_it_goes(cli_study: Path) -> None:
    out = (cli_study / "search-stdout.txt").read_text()
    steps = [
        "checking ",
        "4 layers, ",
        "starting a local Ray for 2 workers",
        "Ray ready",
        f"study 'e2e' in sqlite:///{cli_study / 'e2e.db'}: starting",
        "baseline weights: " if "baseline weights: " in out else "training the baseline digits-cnn",
        "measuring the baseline on the deploy target (torch fp32)",
        "searching: 4 more trials, 2 at a time",
        "Pareto front",
    ]
    positions = [out.index(step) for step in steps]
    assert positions == sorted(positions), out
    # Not a terminal: no bar, a line per trial instead.
    assert len(re.findall(r"^trial \d+: accuracy [\d.]+%, [\d.]+ KB, [\d.]+ ms \[\d/4 complete, front \d+\]$", out, re.M)) == 4, out


def test_quiet_search_prints_the_report_alone(cli_study: Path) -> None:
    proc = run_cli("search", str(cli_study / "study.yaml"), "--quiet", cwd=cli_study)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("study e2e: 4 complete"), proc.stdout


def test_cli_search_stores_complete_trials_with_three_named_values(cli_study: Path) -> None:
    study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{cli_study / 'e2e.db'}")
    assert study.metric_names == ["accuracy", "size_bytes", "latency_ms"]
    trials = study.get_trials()
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    baseline = study.user_attrs["baseline"]
    assert baseline["accuracy"] > 0.9 and baseline["size_bytes"] > 100_000
    for t in trials:
        accuracy, size_bytes, latency_ms = t.values
        assert 0.0 <= accuracy <= 1.0 and 0 < size_bytes < baseline["size_bytes"] and latency_ms > 0
        assert CompressionPlan.from_dict(t.user_attrs["plan"]).layers.keys() == {"conv1", "conv2", "fc1", "fc2"}
        assert t.user_attrs["metrics"]["size_bytes"] == size_bytes
        assert len(t.user_attrs["per_layer"]) == 4
        assert t.user_attrs["node_id"]  # evaluated on a Ray node
    # The first trial is the enqueued uniform 8-bit plan: 8-bit keeps accuracy, ~4x smaller.
    first = study.trials[0]
    assert {lp["bits"] for lp in first.user_attrs["plan"].values()} == {8}
    assert first.values[0] >= baseline["accuracy"] - 0.02
    assert 3.5 < baseline["size_bytes"] / first.values[1] < 4.1


def test_report_into_a_pipe_closed_early_is_quiet(cli_study: Path) -> None:
    url = f"sqlite:///{cli_study / 'e2e.db'}"
    cmd = f"{sys.executable} -m autocompress report e2e --storage {url} --json | true"  # the reader is gone before the first write
    proc = subprocess.run(cmd, shell=True, cwd=cli_study, capture_output=True, text=True, timeout=300)
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr


def test_report_json_is_a_nonempty_non_dominated_front(cli_study: Path) -> None:
    proc = run_cli("report", "e2e", "--storage", f"sqlite:///{cli_study / 'e2e.db'}", "--json", cwd=cli_study)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert rows
    keys = {"trial", "accuracy", "accuracy_drop", "size_bytes", "compression_ratio", "latency_ms", "speedup", "plan"}
    assert all(keys <= row.keys() for row in rows)
    points = [[r["accuracy"], r["size_bytes"], r["latency_ms"]] for r in rows]
    assert not any(dominates(a, b) for a in points for b in points if a is not b)
    for r in rows:
        assert r["compression_ratio"] > 1.0


def test_report_rechecks_the_front_on_the_test_split_once(cli_study: Path) -> None:
    url = f"sqlite:///{cli_study / 'e2e.db'}"
    rows = json.loads(run_cli("report", "e2e", "--storage", url, "--json", cwd=cli_study).stdout)
    study = optuna.load_study(study_name="e2e", storage=url)
    stored = study.user_attrs["test_accuracy"]
    assert sorted(map(int, stored)) == sorted(r["trial"] for r in rows)
    for r in rows:
        assert 0.0 <= r["test_accuracy"] <= 1.0 and r["test_accuracy"] == stored[str(r["trial"])]
        assert r["test_accuracy_drop"] == pytest.approx(100 * (study.user_attrs["baseline"]["test_accuracy"] - r["test_accuracy"]), abs=1e-3)
        # Each drop carries its paired 95% interval, on validation and on test, around the drop.
        for key in ("accuracy_drop", "test_accuracy_drop"):
            low, high = r[f"{key}_interval"]
            assert low - 1e-3 <= r[key] <= high + 1e-3
            assert r[f"{key}_within_noise"] == (low <= 0 <= high)
    vectors = [study.user_attrs["baseline"]["test_correct"], *study.user_attrs["test_correct"].values()]
    assert {len(unpack_correct(v)) for v in vectors} == {360}  # one bit per test image, baseline and trials alike


def test_export_writes_the_trial_artifact_and_it_reloads(cli_study: Path) -> None:
    import autocompress
    from autocompress.tasks import TaskSpec, evaluate_accuracy, load_data

    url = f"sqlite:///{cli_study / 'e2e.db'}"
    study = optuna.load_study(study_name="e2e", storage=url)
    trial = study.best_trials[0]
    out = cli_study / "exported.acz"
    proc = run_cli("export", "e2e", "--trial", str(trial.number), "-o", str(out), "--storage", url, cwd=cli_study)
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size == trial.values[1]  # the size objective is this file's length
    model = autocompress.load(out)
    data = load_data(TaskSpec(model="digits-cnn"))
    assert evaluate_accuracy(model, data.x_val, data.y_val) == trial.values[0]
    proc = run_cli("inspect", str(out), "--json", cwd=cli_study)
    info = json.loads(proc.stdout)
    assert info["size_bytes"] == trial.values[1] and info["plan"] == trial.user_attrs["plan"]


def test_terminal_report_shows_the_front_and_baseline(cli_study: Path) -> None:
    proc = run_cli("report", "e2e", "--storage", f"sqlite:///{cli_study / 'e2e.db'}", cwd=cli_study)
    assert proc.returncode == 0, proc.stderr
    assert "baseline: accuracy" in proc.stdout and "ratio" in proc.stdout and "test acc %" in proc.stdout
    assert re.search(r"^  trial \d+: conv1 ", proc.stdout, re.MULTILINE)  # each front trial's plan


def test_rerun_resumes_and_completes_only_what_is_missing(cli_study: Path) -> None:
    config = cli_study / "study.yaml"
    proc = run_cli("search", str(config), "--trials", "5", "--workers", "0", cwd=cli_study)
    assert proc.returncode == 0, proc.stderr
    with sqlite3.connect(cli_study / "e2e.db") as db:
        states = [s for (s,) in db.execute("SELECT state FROM trials ORDER BY number")]
    assert states == ["COMPLETE"] * 5


@pytest.fixture(scope="module")
def dashboard(cli_study: Path):
    """``autocompress dashboard`` (the real optuna-dashboard) on loopback for the CLI study."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "autocompress",
            "dashboard",
            "--storage",
            f"sqlite:///{cli_study / 'e2e.db'}",
            "--port",
            str(port),
            "--artifact-dir",
            str(cli_study / "studies" / "artifacts"),
        ],
        cwd=cli_study,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/api/studies", timeout=2).close()
                break
            except OSError:
                time.sleep(0.5)
        else:
            raise AssertionError("the dashboard did not answer")
        yield base
    finally:
        server.terminate()
        server.wait(timeout=10)


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.load(resp)


def test_dashboard_shows_objectives_constraints_and_artifacts(dashboard: str, cli_study: Path) -> None:
    (summary,) = [s for s in _get_json(f"{dashboard}/api/studies")["study_summaries"] if s["study_name"] == "e2e"]
    assert summary["directions"] == ["maximize", "minimize", "minimize"]
    detail = _get_json(f"{dashboard}/api/studies/{summary['study_id']}")
    assert detail["objective_names"] == ["accuracy", "size_bytes", "latency_ms"]
    baseline = optuna.load_study(study_name="e2e", storage=f"sqlite:///{cli_study / 'e2e.db'}").user_attrs["baseline"]
    complete = [t for t in detail["trials"] if t["state"] == "Complete"]
    for t in complete:
        # feasibility as the dashboard reads it: accuracy drop minus the 2-point limit
        drop = 100 * (baseline["accuracy"] - t["values"][0])
        assert t["constraints"] == [pytest.approx(drop - 2.0)]
        (art,) = t["artifacts"]
        assert art["filename"] == f"trial-{t['number']}.acz"
        # The trial table names the deploy target its latency came from.
        attrs = {a["key"]: a["value"] for a in t["user_attrs"]}
        assert attrs["deploy"].startswith("torch fp32 cpu, 1 thread, batch 32 [torch fp32 cpu]")
        # ...and the baseline-relative numbers, each its own column.
        assert float(attrs["drop_points"]) == pytest.approx(drop, abs=1e-3)
        assert float(attrs["compression_ratio"]) == pytest.approx(baseline["size_bytes"] / t["values"][1], rel=1e-2)
        assert float(attrs["speedup"]) > 0
    # "Best Trial" badges only on feasible trials, the front the report shows.
    best = {t["number"] for t in detail["best_trials"]}
    feasible = {t["number"] for t in complete if t["constraints"][0] <= 0}
    assert best and best <= feasible
    assert best == set(study_analysis(optuna.load_study(study_name="e2e", storage=f"sqlite:///{cli_study / 'e2e.db'}")).front)
    assert detail["artifacts"][0]["filename"] == "baseline.acz"
    t = complete[0]
    url = f"{dashboard}/artifacts/{summary['study_id']}/{t['trial_id']}/{t['artifacts'][0]['artifact_id']}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        data = resp.read()
    assert data.startswith(artifact.MAGIC) and len(data) == t["values"][1]  # the artifact, served whole


def test_dashboard_page_renders_the_pareto_plot_in_chromium(dashboard: str, cli_study: Path) -> None:
    summary = next(s for s in _get_json(f"{dashboard}/api/studies")["study_summaries"] if s["study_name"] == "e2e")
    dom = chromium(f"{dashboard}/dashboard/studies/{summary['study_id']}", screenshot=ARTIFACTS / "dashboard-study.png")
    start = dom.index('id="graph-pareto-front"')
    plot = dom[start : dom.index("</svg>", start)]
    study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{cli_study / 'e2e.db'}")
    complete = len(study.get_trials(states=(TrialState.COMPLETE,)))
    assert plot.count('class="point"') == complete  # one marker per complete trial


def test_html_report_is_self_contained_and_renders_in_chromium(cli_study: Path) -> None:
    out = cli_study / "report.html"
    proc = run_cli("report", "e2e", "--storage", f"sqlite:///{cli_study / 'e2e.db'}", "--html", str(out), cwd=cli_study)
    assert proc.returncode == 0, proc.stderr
    page = out.read_text()
    assert "<script src=" not in page and "cdn" not in page.lower().split("plotly.js v")[0]  # no remote scripts
    dom = chromium(out.as_uri(), screenshot=ARTIFACTS / "html-report.png")
    study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{cli_study / 'e2e.db'}")
    from autocompress.pareto import study_analysis

    analysis = study_analysis(study)
    projection = dom[dom.index('id="plot-0"') : dom.index('id="plot-1"')]
    expected = (
        2 * len(analysis.points)  # every trial in both panels
        + sum(len(v) for v in analysis.projections.values())  # each panel's own front
        + 2 * (analysis.knee is not None)
        + 2  # the knee and the baseline in both panels
    )
    assert projection.count('class="point"') == expected
    assert ("infeasible trials" in projection) == (analysis.feasible_count < len(analysis.points))  # the legend names the x marker
    assert 'id="plot-3"' in dom  # the per-layer heatmap of the front
    assert "<th>test drop</th>" in page and "autocompress export e2e --trial N" in page


def test_sql_tables_hold_layers_hypervolume_and_fronts(cli_study: Path) -> None:
    with sqlite3.connect(cli_study / "e2e.db") as db:
        (version,) = db.execute("SELECT version FROM autocompress_schema").fetchone()
        n_complete = db.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
        layers = db.execute(
            "SELECT t.number, l.layer, l.bits, l.bytes FROM autocompress_layers l "
            "JOIN trials t ON t.study_id = l.study_id AND t.number = l.trial_number ORDER BY t.number, l.layer"
        ).fetchall()
        history = [hv for (hv,) in db.execute("SELECT hypervolume FROM autocompress_hypervolume ORDER BY n_complete")]
        last = db.execute("SELECT MAX(snapshot) FROM autocompress_front").fetchone()[0]
        front = sorted(n for (n,) in db.execute("SELECT trial_number FROM autocompress_front WHERE snapshot = ?", (last,)))
    assert version == 1
    assert len(layers) == 4 * n_complete and {layer for _, layer, _, _ in layers} == {"conv1", "conv2", "fc1", "fc2"}
    assert all(b > 0 for *_, b in layers)
    assert len(history) == n_complete and all(b >= a for a, b in itertools.pairwise(history))
    from autocompress.pareto import study_analysis

    analysis = study_analysis(optuna.load_study(study_name="e2e", storage=f"sqlite:///{cli_study / 'e2e.db'}"))
    assert last == n_complete and front == sorted(analysis.front)
    assert history[-1] == pytest.approx(analysis.hypervolume)


def test_new_study_never_resumes_a_taken_name(
    cli_study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A study of that name with another space is refused; --new-study starts NAME-2 instead."""
    with sqlite3.connect(cli_study / "e2e.db") as src, sqlite3.connect(tmp_path / "copy.db") as dst:
        src.backup(dst)  # leave the shared study as it is (a file copy would miss the write-ahead log)
    (tmp_path / "other-space.yaml").write_text("knobs: {bits: [4, 8]}\n")
    text = (cli_study / "study.yaml").read_text()
    text = text.replace(str(cli_study / "e2e.db"), str(tmp_path / "copy.db"))
    text = text.replace(str(REPO / "search_spaces/default.yaml"), "other-space.yaml")
    (tmp_path / "other.yaml").write_text(text)
    args = ["search", str(tmp_path / "other.yaml"), "--workers", "0", "--trials", "1"]
    monkeypatch.chdir(tmp_path)  # in this process, as the CLI runs it
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "another search space" in err and "--new-study" in err
    assert main([*args, "--new-study"]) == 0
    assert "study e2e-2: 1 complete" in capsys.readouterr().out
    studies = {s.study_name: s for s in optuna.get_all_study_summaries(f"sqlite:///{tmp_path / 'copy.db'}")}
    original = {s.study_name: s for s in optuna.get_all_study_summaries(f"sqlite:///{cli_study / 'e2e.db'}")}
    assert studies["e2e-2"].n_trials == 1 and studies["e2e"].n_trials == original["e2e"].n_trials  # untouched


def test_space_stored_on_the_study_keeps_zero_bounds(cli_study: Path) -> None:
    study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{cli_study / 'e2e.db'}")
    assert study.user_attrs["space"]["fc1"]["sparsity"] == {"low": 0.0, "high": 0.95, "step": 0.05}


@pytest.mark.parametrize("sampler", ["nsga2", "gp", "random"])
def test_samplers_run_in_process(tmp_path: Path, cache_dir: Path, sampler: str) -> None:
    config = load_config(_write_config(tmp_path, cache_dir, trials=2, workers=0, sampler=sampler, warm_start=False))
    study = run_search(config, progress=False)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert "sampler" in study.user_attrs["config"]["search"]


def test_python_api_on_a_shared_ray(tmp_path: Path, cache_dir: Path, ray_local) -> None:
    """The Ray runner joins an already-initialised Ray and leaves it running."""
    config = load_config(_write_config(tmp_path, cache_dir, trials=3, workers=2))
    study = run_search(config, progress=False)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3
    assert ray_local.is_initialized()


class _FailingRunner(LocalRunner):
    """A real runner whose every evaluation fails the same way."""

    def submit(self, trial_number: int, plan: CompressionPlan) -> None:
        self._done.append((trial_number, Result.failure("RuntimeError: kernel exploded")))


def test_repeated_failures_stop_the_search_and_keep_reasons(tmp_path: Path, cache_dir: Path) -> None:
    config = load_config(_write_config(tmp_path, cache_dir, trials=10, workers=0, max_failures_in_a_row=3, sensitivity=False))
    with pytest.raises(SearchError, match=r"3 trials in a row failed.*kernel exploded"):
        Driver(config, runner=_FailingRunner(), progress=False).run()
    study = optuna.load_study(study_name="e2e", storage=config.storage)
    ran = [t for t in study.trials if t.state != TrialState.WAITING]  # unused warm-start plans stay queued
    assert [t.state for t in ran] == [TrialState.FAIL] * 3
    assert all(t.user_attrs["fail_reason"] == "RuntimeError: kernel exploded" for t in ran)


def test_an_artifact_write_failure_fails_the_trial_and_stops_cleanly(tmp_path: Path, cache_dir: Path) -> None:
    from autocompress.errors import StorageError

    config = load_config(_write_config(tmp_path, cache_dir, trials=2, workers=0))
    config = replace(config, artifact_dir=str(tmp_path / "artifacts"))

    class BreaksTheArtifactFolder(LocalRunner):
        """Evaluates for real, then puts a file where the artifact folder was (a dead disk)."""

        def submit(self, trial_number: int, plan: CompressionPlan) -> None:
            super().submit(trial_number, plan)
            shutil.rmtree(tmp_path / "artifacts")
            (tmp_path / "artifacts").write_text("not a folder")

    with pytest.raises(StorageError, match="cannot write artifacts"):
        Driver(config, runner=BreaksTheArtifactFolder(), progress=False).run()
    study = optuna.load_study(study_name="e2e", storage=config.storage)
    trial = study.trials[0]
    assert trial.state == TrialState.FAIL and "artifact not stored" in trial.user_attrs["fail_reason"]
    assert not any(t.state == TrialState.RUNNING for t in study.trials)  # the rest still WAITING


def test_a_failing_plan_becomes_a_failed_result_not_an_exception(cnn_task) -> None:
    from autocompress.deploy.target import DeployConfig
    from autocompress.evaluate import Evaluator, FinetuneConfig
    from autocompress.plan import LayerPlan

    evaluator = Evaluator(cnn_task, FinetuneConfig(steps=2), DeployConfig(max_seconds=0.05))
    result = evaluator.evaluate(CompressionPlan({"fc1": LayerPlan(rank=999)}))
    assert not result.ok and "rank 999" in result.error


def test_delete_removes_the_study_its_rows_and_its_artifacts(tmp_path: Path, cache_dir: Path) -> None:
    import sqlite3

    from autocompress.cli import main
    from tests.helpers import write_study_config

    db = tmp_path / "del.db"
    config = write_study_config(
        tmp_path,
        cache_dir,
        {"trials": 2, "workers": 0},
        storage=f"sqlite:///{db}",
        artifact_dir=str(tmp_path / "artifacts"),
        finetune={"steps": 5},
        deploy={"max_seconds": 0.05},
    )
    # In this process, as the CLI runs them: the commands, not the interpreter's start, are tested.
    assert main(["search", str(config), "--no-progress"]) == 0
    files = [p for p in (tmp_path / "artifacts").rglob("*") if p.is_file()]
    assert len(files) == 3  # baseline + 2 trials
    assert main(["delete", "autocompress", "--yes", "--storage", f"sqlite:///{db}"]) == 0
    assert not [p for p in (tmp_path / "artifacts").rglob("*") if p.is_file()]
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM studies").fetchone()[0] == 0
        for table in ("autocompress_layers", "autocompress_hypervolume", "autocompress_front", "autocompress_drivers"):
            assert conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] == 0, table
    # A new study of the same name starts clean: its rows are its own.
    assert main(["search", str(config), "--no-progress"]) == 0
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM autocompress_hypervolume").fetchone()[0] == 2


def test_a_half_created_study_is_completed_and_artifacts_follow_the_study(tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A study created but never described (its driver killed in between) is completed by the
    next run; a run resumed from another folder writes artifacts where the study records them."""
    from autocompress.cli import main
    from tests.helpers import write_study_config

    db = tmp_path / "h.db"
    optuna.create_study(study_name="autocompress", storage=f"sqlite:///{db}", directions=["maximize", "minimize", "minimize"])
    config = write_study_config(
        tmp_path,
        cache_dir,
        {"trials": 1, "workers": 0},
        storage=f"sqlite:///{db}",
        artifact_dir="arts",
        finetune={"steps": 5},
        deploy={"max_seconds": 0.05},
    )
    # In this process, as the CLI runs them, from one folder and then another.
    monkeypatch.chdir(tmp_path)
    assert main(["search", str(config), "--no-progress"]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["search", str(config), "--no-progress", "--trials", "2"]) == 0
    study = optuna.load_study(study_name="autocompress", storage=f"sqlite:///{db}")
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 2 and study.metric_names == ["accuracy", "size_bytes", "latency_ms"]
    assert not (elsewhere / "arts").exists() and len([p for p in (tmp_path / "arts").rglob("*") if p.is_file()]) == 3
    assert main(["export", "autocompress", "--trial", "1", "--storage", f"sqlite:///{db}"]) == 0
