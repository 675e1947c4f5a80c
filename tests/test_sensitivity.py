"""Sensitivity: one-shot rows per group and knob value, stored with the study and drawn in the
HTML report; the warm start's ladder meets its size targets; the cache is reused, and never
across tasks, spaces or deploy targets."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from autocompress import sensitivity, tables
from autocompress.config import load_config
from autocompress.driver import Driver
from autocompress.html_report import write_html
from autocompress.space import load_space, parse_space
from autocompress.tasks import TaskSpec, model_skeleton
from tests.helpers import write_study_config


def _space(knobs: dict | None = None):  # type: ignore[no-untyped-def]
    model, example = model_skeleton(TaskSpec(model="digits-mlp"))
    spec = load_space(None) if knobs is None else parse_space({"knobs": knobs}, "test")
    return spec.resolve(model, example)


def test_probes_set_one_group_s_knob_and_leave_the_rest_uncompressed() -> None:
    space = _space()
    found = sensitivity.probes(space)
    assert {p.knob for p in found} == {"bits", "sparsity", "channel", "rank"}
    assert not [p for p in found if p.group == "fc3" and p.knob == "channel"]  # the output layer keeps its classes
    probe = next(p for p in found if p.group == "fc2" and p.knob == "bits" and p.value == 4)
    plan = sensitivity.probe_plan(space, probe)
    assert plan.layers["fc2"].bits == 4 and plan.layers["fc1"].bits == 32 and plan.layers["fc3"].sparsity == 0.0


def test_the_ladder_spends_each_budget_on_the_least_sensitive_groups() -> None:
    space = _space({"bits": [2, 4, 8, 32], "sparsity": {"low": 0.0, "high": 0.9, "step": 0.05}, "rank": None, "sparsity_mode": "unstructured"})
    weights = sensitivity.group_bytes(space)
    rows = []
    for group, base in weights.items():
        fragile = group == "fc1"  # fc1 loses a lot at any setting; the others lose nothing
        for bits in (2, 4, 8):
            rows.append(sensitivity.Row(group, "bits", bits, 0.0, 30.0 if fragile else 0.0, 0, int(base * bits / 32) - base, None))
        for s in (0.25, 0.5, 0.75, 0.9):
            rows.append(sensitivity.Row(group, "sparsity", s, 0.0, 30.0 if fragile else 0.0, 0, int(base * (1 - s)) - base, None))
    total = sum(weights.values()) + 1000
    plans = sensitivity.ladder(space, rows, total, [1.5, 4.0, 1000.0])
    assert [p.target for p in plans] == [1.5, 4.0]  # 1000x smaller is out of reach
    for plan in plans:
        assert plan.estimated_bytes <= total / plan.target
    # Within 1.5x, fc1 (a third of the bytes... or more) need not be touched: the others give enough.
    loose = plans[0].params
    if weights["fc1"] < total - total / 1.5:
        assert loose["fc1.bits"] == 32 and loose["fc1.sparsity"] == 0.0 and plans[0].estimated_drop == 0.0


def test_the_cache_is_keyed_by_task_space_and_deploy_target() -> None:
    space, other = _space(), _space({"bits": [4, 8]})
    deploy = {"runtime": "torch", "precision": "fp32"}
    key = sensitivity.cache_key("task-a", space, deploy)
    assert key == sensitivity.cache_key("task-a", _space(), dict(deploy))
    assert len({key, sensitivity.cache_key("task-b", space, deploy), sensitivity.cache_key("task-a", other, deploy)}) == 3
    assert key != sensitivity.cache_key("task-a", space, {**deploy, "precision": "int8"})


@pytest.mark.e2e
def test_a_search_measures_stores_and_draws_the_sensitivity_and_a_second_reuses_it(tmp_path: Path) -> None:
    def config(name: str) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        return write_study_config(
            folder,
            tmp_path / "baselines",
            {"trials": 9, "workers": 0, "seed": 0, "sampler": "random", "ladder": [4, 12]},
            name=name,
            storage=f"sqlite:///{tmp_path / 's.db'}",
            artifact_dir=str(tmp_path / "artifacts"),
            task={"model": "digits-mlp", "train_epochs": 10},
            finetune={"steps": 20},
            deploy={"max_seconds": 0.05},
        )

    lines: list[str] = []
    study = Driver(load_config(config("first")), progress=False, say=lines.append).run()
    space = _space()
    # One row per group, knob and probed value, in the study's own table.
    engine = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}").engine
    rows = tables.sensitivity_rows(engine, study._study_id)
    assert {(r["group"], r["knob"], r["value"]) for r in rows} == {(p.group, p.knob, p.value) for p in sensitivity.probes(space)}
    assert any(line.startswith("sensitivity: ") and "one-shot probes" in line for line in lines)
    # digits-mlp's warm start queues 7 uniform plans; the 2 trials left go to the ladder.
    ladder = study.user_attrs["ladder"]
    assert [p["target"] for p in ladder] == [4.0, 12.0]
    baseline_bytes = study.user_attrs["baseline"]["size_bytes"]
    ran = {t.user_attrs.get("ladder_target"): t for t in study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))}
    for plan in ladder:
        trial = ran[plan["target"]]
        assert trial.params == plan["params"]
        assert trial.state == TrialState.COMPLETE and trial.user_attrs["metrics"]["size_bytes"] <= baseline_bytes / plan["target"]
    html = write_html(study, tmp_path / "report.html").read_text()
    assert "Sensitivity: accuracy drop in points" in html

    lines.clear()
    second = Driver(load_config(config("second")), progress=False, say=lines.append).run()
    assert any(line.startswith("sensitivity: cached at ") for line in lines)
    assert second.user_attrs["ladder"] == ladder
    assert len(tables.sensitivity_rows(engine, second._study_id)) == len(rows)
