"""A first run that cannot mislead: a baseline at chance stops the search before anything is
spent on it, and a task key is applied or refused, never ignored."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from autocompress import sensitivity
from autocompress.config import FinetuneConfig, load_config
from autocompress.deploy.target import DeployConfig
from autocompress.deploy.timing import LoadMeter
from autocompress.driver.checks import ignored_config_keys, ignored_task_keys, prepare, rebuild_note
from autocompress.errors import SearchError
from autocompress.report import unstable_notes
from autocompress.runners import LocalRunner
from autocompress.space import parse_space
from autocompress.tasks import Task
from tests.helpers import run_cli

UNTRAINED = '''
import torch
from torch import nn


def make() -> nn.Module:
    """Zero weights: every input gets class 0, so it scores the share of class 0 at best."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.zero_()
    return model
'''


def _config(tmp_path: Path, task: str = "", search: str = "", workers: int = 0) -> Path:
    (tmp_path / "untrained.py").write_text(UNTRAINED)
    config = tmp_path / "study.yaml"
    config.write_text(
        "name: first\nstorage: sqlite:///first.db\n"
        f"task: {{model: 'untrained:make', dataset: digits{task}}}\n"
        f"search: {{workers: {workers}, trials: 1, sensitivity: false, warm_start: false{search}}}\n"
        "finetune: {steps: 2}\n"
    )
    return config


def test_an_untrained_baseline_stops_the_search_and_leaves_no_study(tmp_path: Path) -> None:
    proc = run_cli("search", str(_config(tmp_path)), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: the baseline scores accuracy"), proc.stderr
    assert "no better than chance" in lines[0] and "set task.train_epochs" in lines[0] and "--allow-chance-baseline" in lines[0]
    assert "Traceback" not in proc.stderr
    # Nothing half-written: the study it created for the baseline is gone, so a fixed run starts clean.
    assert optuna.get_all_study_names(f"sqlite:///{tmp_path / 'first.db'}") == []


def test_a_chance_baseline_searched_on_purpose_is_marked_in_the_report(tmp_path: Path) -> None:
    proc = run_cli("search", str(_config(tmp_path)), "--allow-chance-baseline", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "the baseline is no better than chance" in proc.stdout
    report = run_cli("report", "first", "--storage", "sqlite:///first.db", "--html", "r.html", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert "no better than chance" in report.stdout
    assert 'id="chance-baseline"' in (tmp_path / "r.html").read_text()
    study = optuna.load_study(study_name="first", storage=f"sqlite:///{tmp_path / 'first.db'}")
    assert study.user_attrs["baseline"]["at_chance"] is True


def test_train_epochs_trains_a_task_functions_model_instead_of_being_ignored(tmp_path: Path) -> None:
    proc = run_cli("search", str(_config(tmp_path, task=", train_epochs: 6")), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "training the baseline untrained:make on digits for 6 epochs" in proc.stdout
    assert "task keys used: task.model, task.dataset, task.train_epochs" in proc.stdout
    study = optuna.load_study(study_name="first", storage=f"sqlite:///{tmp_path / 'first.db'}")
    assert study.user_attrs["baseline"]["accuracy"] > 0.8  # trained from the function's (zero) weights
    cached = list((tmp_path / "studies" / "baselines").glob("untrained_make-digits-*.json"))
    assert cached and json.loads(cached[0].read_text())["epochs"] == 6


@pytest.mark.parametrize(
    ("task", "key", "needle"),
    [
        (", train_lr: 0.01", "train_lr", "set task.train_epochs to train them further"),
        (", data_root: /tmp", "data_root", "read from no folder"),
    ],
)
def test_a_task_key_that_would_be_ignored_is_refused_by_name(tmp_path: Path, task: str, key: str, needle: str) -> None:
    config = load_config(_config(tmp_path, task=task))
    assert key in ignored_task_keys(config.task)
    with pytest.raises(SearchError, match=f"task.{key} would be ignored .*{needle}"):
        prepare(config)


def test_a_task_function_that_each_worker_calls_again_is_said_with_the_fix(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, workers=2))
    assert "runs again in each of the 2 workers" in (rebuild_note(config) or "") and "task.build" in (rebuild_note(config) or "")
    assert rebuild_note(load_config(_config(tmp_path))) is None  # in this process: it runs once
    with_hook = load_config(_config(tmp_path, task=", build: 'untrained:make'", workers=2))
    assert rebuild_note(with_hook) is None


def test_the_load_meter_counts_other_processes_cpu_not_its_own() -> None:
    meter = LoadMeter()
    spin = "import time\nend = time.time() + 1.5\nwhile time.time() < end:\n    pass\n"
    subprocess.run([sys.executable, "-c", spin], check=True)
    cores = meter.others_cores()
    assert cores is not None and cores >= 0.5  # the spinner's core, seen from outside it


def test_a_flagged_latency_says_what_was_observed() -> None:
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    study.set_user_attr("config", {"deploy": {"threshold": 0.05, "max_seconds": 1.0}})
    rows = [
        {"trial": 3, "latency_unstable": True, "latency_cv": 0.12, "latency_rounds": 17, "latency_seconds": 1.02, "latency_others_cores": 1.5},
        {"trial": 4, "latency_unstable": True, "latency_cv": 0.04, "latency_rounds": 9},
        {"trial": 5, "latency_unstable": False},
    ]
    three, four = unstable_notes(rows, study)
    assert three == (
        "~ trial 3: latency CV 0.120 (threshold 0.05) after 17 rounds in 1.0 s, when the time cap ended it; "
        "other processes kept 1.5 cores busy meanwhile: raise deploy.max_seconds (now 1 s)"
    )
    assert "after 9 rounds of the 10 needed" in four and "not measured" in four and "busy" not in four


def test_the_warm_start_times_only_what_changes_kernels_and_checks_its_cheap_form(mlp_task: Task) -> None:
    """On ONNX Runtime int8, every bit-width of 8 or fewer runs the same integer kernels: one
    timed probe per group, the others take its ratio; its deployed score checks the torch form's."""
    space = parse_space({"knobs": {"bits": [4, 8], "sparsity": 0.0, "rank": 1.0}}, "s.yaml").resolve(mlp_task.build_model())
    runner = LocalRunner()
    runner.start(mlp_task, FinetuneConfig(steps=0), DeployConfig(runtime="onnxruntime", precision="int8", max_seconds=0.2))
    lines: list[str] = []
    reference, rows = sensitivity.measure(space, runner.one_shot, "int8", say=lines.append)
    assert lines[0].startswith("sensitivity: 6 one-shot probes of 3 groups on 1 worker(s), 3 of them timed") and " s" in lines[0]
    by = {(r.group, r.value): r for r in rows}
    for group in space.groups:
        assert by[(group, 4.0)].latency_ratio == by[(group, 8.0)].latency_ratio is not None
    assert reference["agreement"]["probes"] == 3
    assert reference["agreement"]["max_gap"] < 2.0  # points: simulated int8 in torch against the deployed ONNX file
    # Over its share of the search, the remaining probes go untimed.
    lines.clear()
    _, rows = sensitivity.measure(space, runner.one_shot, "int8", say=lines.append, budget=lambda trial_s: 0.0)
    assert any("over search.sensitivity_share" in line for line in lines)
    assert sum(r.latency_ratio is not None for r in rows) == 2  # the first timed group's two bit-widths only


def test_keys_of_other_sections_that_change_nothing_are_refused_or_said(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, search=", cpus_per_worker: 2"))
    refused, noted = ignored_config_keys(config)
    assert not refused and "search workers 0" in noted["search.cpus_per_worker"].replace(".", " ")
    (tmp_path / "distill.yaml").write_text(_config(tmp_path).read_text().replace("finetune: {steps: 2}", "finetune: {steps: 2, temperature: 2.0}"))
    with pytest.raises(SearchError, match=r"finetune.temperature would be ignored .*finetune.distill is 0"):
        prepare(load_config(tmp_path / "distill.yaml"))
