"""The task protocol: metrics with a declared direction, intervals for any metric, split
factories opened where the work runs, and the dry run that checks a task before a search."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch

from autocompress.baseline import resolve_max_drop
from autocompress.errors import TaskError
from autocompress.plan import TOP1, MetricInfo
from autocompress.stats import bootstrap_drop, is_binary, pack_rows, unpack_rows
from autocompress.tasks.metrics import METRICS, builtin_metric
from autocompress.tasks.protocol import from_parts, to_device
from tests.helpers import REPO, run_cli

REGRESSION = REPO / "examples" / "regression"


class Echo(torch.nn.Module):
    """Returns its input: a metric's value is then known exactly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_builtin_metrics_give_known_values_and_directions() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 1.0, 2.0], [2.0, 0.0, 1.0]])
    labels = torch.tensor([0, 2, 2, 1])
    top1 = builtin_metric("accuracy")
    assert top1.higher_is_better and top1.scale == 100.0
    assert top1.value(top1.score(Echo(), (logits, labels)).numpy()) == pytest.approx(0.5)
    top2 = builtin_metric("top2")
    assert top2.name == "top2" and top2.value(top2.score(Echo(), (logits, labels)).numpy()) == pytest.approx(0.75)  # sample 3: 1 is third
    mse, mae = builtin_metric("mse"), builtin_metric("mae")
    pred, target = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([1.0, 3.0, 2.0])
    assert not mse.higher_is_better and mse.value(mse.score(Echo(), (pred, target)).numpy()) == pytest.approx(5.0 / 3)
    assert mae.value(mae.score(Echo(), {"inputs": pred, "targets": target}).numpy()) == pytest.approx(1.0)
    # mIoU over two 2x2 masks: class 0 IoU 2/3, class 1 IoU 3/5 (pixels pooled over the split)
    miou = builtin_metric("miou", {"num_classes": 2})
    masks = torch.tensor([[[0, 0], [1, 1]], [[0, 1], [1, 1]]])
    scores = torch.nn.functional.one_hot(torch.tensor([[[0, 1], [1, 1]], [[0, 0], [1, 1]]]), 2).permute(0, 3, 1, 2).float()
    rows = miou.score(Echo(), (scores, masks)).numpy()
    assert miou.corpus and rows.shape == (2, 4)
    assert miou.value(rows) == pytest.approx(np.mean([2 / 4, 4 / 6]))
    f1 = builtin_metric("macro_f1", {"num_classes": 3})
    rows = f1.score(Echo(), (logits, labels)).numpy()
    # class 0: tp 1 fp 1 fn 0 -> 2/3; class 1: tp 0 fp 1 fn 1 -> 0; class 2: tp 1 fp 0 fn 1 -> 2/3
    assert f1.value(rows) == pytest.approx((2 / 3 + 0 + 2 / 3) / 3)


@pytest.mark.parametrize("name", METRICS.names())
def test_every_metric_states_its_direction_and_round_trips_its_info(name: str) -> None:
    metric = builtin_metric(name, {"num_classes": 3})
    info = MetricInfo.of(metric.info().to_dict())
    assert info.higher_is_better == metric.higher_is_better and info.scale == metric.scale and info.corpus == metric.corpus
    worse = metric.drop(1.0, 0.9 if metric.higher_is_better else 1.1)
    assert worse > 0  # a drop is positive when the score moved the wrong way, whatever the direction


def test_a_study_from_before_metrics_reads_as_top1_in_points() -> None:
    assert MetricInfo.of(None) == TOP1 and TOP1.drop(0.9, 0.88) == pytest.approx(2.0)


def test_max_drop_in_units_or_as_a_share_of_the_baseline() -> None:
    mse = MetricInfo(name="mse", higher_is_better=False, scale=1.0, unit="")
    assert resolve_max_drop("5%", 1.0, mse, 0.4) == pytest.approx(0.02)
    assert resolve_max_drop(0.1, 1.0, mse, 0.4) == pytest.approx(0.1)
    assert resolve_max_drop(None, 1.0, mse, 0.4) == pytest.approx(0.004)  # 1% when not set
    assert resolve_max_drop(None, 1.5, TOP1, 0.9) == 1.5  # accuracy keeps its own spelling
    assert resolve_max_drop("2%", 1.5, TOP1, 0.9) == pytest.approx(1.8)  # 2% of 90% is 1.8 points


def test_scores_round_trip_and_a_damaged_value_is_refused() -> None:
    rows = np.random.default_rng(0).normal(size=(50, 4))
    back = unpack_rows(pack_rows(rows))
    assert back is not None and back.shape == (50, 4) and np.allclose(back, rows.astype(np.float32))
    vector = unpack_rows(pack_rows(np.arange(7.0)))
    assert vector is not None and vector.shape == (7,)
    assert unpack_rows("f4:99:0:" + pack_rows(np.arange(7.0)).split(":", 3)[3]) is None  # claims more than it holds
    assert unpack_rows("f4:1:0:not base64!") is None and unpack_rows(None) is None


def test_paired_bootstrap_is_seeded_and_sees_a_real_drop() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(1.0, 0.3, size=400) ** 2
    mse = builtin_metric("mse")
    same = bootstrap_drop(base, base.copy(), mse.value, mse.drop)
    assert same.drop == 0 and same.low == 0 and same.high == 0 and same.within_noise and same.method == "bootstrap"
    worse = base + 0.2  # every sample's error grows: MSE is lower-is-better, so this is a positive drop
    paired = bootstrap_drop(base, worse, mse.value, mse.drop)
    assert paired.drop == pytest.approx(0.2) and 0 < paired.low < 0.2 < paired.high and not paired.within_noise
    assert paired.lost == 400 and paired.gained == 0
    again = bootstrap_drop(base, worse, mse.value, mse.drop)
    assert (again.low, again.high) == (paired.low, paired.high)  # seeded: the same interval every time
    assert is_binary(np.array([0.0, 1.0])) and not is_binary(base)


def test_a_corpus_metric_is_recomputed_on_each_resample() -> None:
    f1 = builtin_metric("macro_f1", {"num_classes": 2})
    truth = np.array([0, 1] * 100, dtype=float)
    base = np.stack([truth, truth], axis=1)  # always right
    other = base.copy()
    other[:40, 0] = 1 - other[:40, 0]  # 40 of 200 wrong
    paired = bootstrap_drop(base, other, f1.value, f1.drop)
    assert paired.drop == pytest.approx(1.0 - f1.value(other))
    assert 0 < paired.low <= paired.drop <= paired.high


def test_protocol_parts_are_checked_with_the_fix_named() -> None:
    def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(torch.zeros(2, 3), torch.zeros(2))]

    parts = {"model": torch.nn.Linear(3, 1), "train": batches, "val": batches, "test": batches, "example_input": torch.zeros(1, 3)}
    assert from_parts(dict(parts), "t").metric.name == "accuracy"  # top-1 unless named
    with pytest.raises(TaskError, match="without a direction"):
        from_parts({**parts, "metric": lambda m, b: b[1], "metric_name": "err"}, "t")
    with pytest.raises(TaskError, match="no 'metric_name'"):
        from_parts({**parts, "metric": lambda m, b: b[1], "higher_is_better": False}, "t")
    with pytest.raises(TaskError, match="no 'example_input'"):
        from_parts({k: v for k, v in parts.items() if k != "example_input"}, "t")
    with pytest.raises(TaskError, match="only a metric function uses"):
        from_parts({**parts, "metric": "mse", "higher_is_better": True}, "t")
    with pytest.raises(TaskError, match="unknown metric 'rouge'"):
        from_parts({**parts, "metric": "rouge"}, "t")
    with pytest.raises(TaskError, match="no 'val' split"):
        from_parts({k: v for k, v in parts.items() if k != "val"}, "t")


def test_batches_of_any_structure_move_with_their_dtypes() -> None:
    batch = {"ids": torch.tensor([[1, 2]]), "mask": torch.tensor([[True, False]]), "extra": ("x", torch.zeros(1))}
    moved = to_device(batch, torch.device("cpu"))
    assert moved["ids"].dtype == torch.int64 and moved["mask"].dtype == torch.bool and moved["extra"][0] == "x"


def _example_config(
    tmp_path: Path, model: str, build: str, space: str | None = None, name: str = "example", search: str = "trials: 2, workers: 0", extra: str = ""
) -> Path:
    """A small study config for an example task, everything it writes under ``tmp_path``."""
    config = tmp_path / "study.yaml"
    text = textwrap.dedent(
        f"""\
        name: {name}
        storage: sqlite:///{tmp_path / "s.db"}
        artifact_dir: {tmp_path / "artifacts"}
        cache_dir: {tmp_path / "cache"}
        task: {{model: "{model}", build: "{build}"}}
        search: {{{search}, seed: 0, sensitivity: false}}
        finetune: {{steps: 10}}
        deploy: {{max_seconds: 0.1}}
        """
    )
    config.write_text(text + (f"space: {space}\n" if space else "") + extra)
    return config


def _small_search(tmp_path: Path) -> dict[str, Any]:
    """``autocompress.search`` options for a two-trial search writing under ``tmp_path``."""
    return {
        "storage": f"sqlite:///{tmp_path / 'api.db'}",
        "trials": 2,
        "finetune": {"steps": 8},
        "deploy": {"max_seconds": 0.05},
        "sensitivity": False,
        "artifact_dir": str(tmp_path / "artifacts"),
        "cache_dir": str(tmp_path / "cache"),
    }


def _search_env(log: Path) -> dict[str, str]:
    return {"AUTOCOMPRESS_OPEN_LOG": str(log)}


@pytest.mark.e2e
def test_regression_searches_on_two_ray_workers_without_the_driver_opening_data(tmp_path: Path) -> None:
    """A task of a kind the built-in tasks never were: MSE, lower is better, data factories that
    record which process opened them. The driver's process never opens a split; the report names
    the metric and its direction; every front row carries a paired interval; the study resumes."""
    log = tmp_path / "opened.log"
    config = _example_config(
        tmp_path, "diabetes:make_task", "diabetes:DiabetesNet", name="diabetes", search="trials: 3, workers: 2", extra="pareto: {max_drop: '20%'}\n"
    )
    env = {**_search_env(log), "PYTHONPATH": os.pathsep.join([str(REGRESSION), *sys.path])}
    proc = run_cli("search", str(config), "--no-progress", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "opened on the workers, never here; metric mse (lower is better)" in out
    assert "mse " in out and "(lower is better)" in out
    opened = [line.split() for line in log.read_text().splitlines()]
    pids = {int(pid) for _, pid in opened}
    assert {split for split, _ in opened} == {"train", "val", "test"}
    with sqlite3.connect(tmp_path / "s.db") as conn:  # the driver's lease row holds its pid
        drivers = {pid for (pid,) in conn.execute("SELECT pid FROM autocompress_drivers")}
    assert len(drivers) == 1 and not drivers & pids  # the driver's process never opened a split
    assert len(pids) >= 1 and os.getpid() not in pids
    study = optuna.load_study(study_name="diabetes", storage=f"sqlite:///{tmp_path / 's.db'}")
    assert study.metric_names == ["mse", "size_bytes", "latency_ms"]
    assert study.directions[0] == optuna.study.StudyDirection.MINIMIZE
    baseline = study.user_attrs["baseline"]
    assert baseline["metric"]["name"] == "mse" and baseline["metric"]["higher_is_better"] is False
    assert baseline["max_drop"] == pytest.approx(0.2 * baseline["accuracy"])
    proc = run_cli("report", "diabetes", "--storage", f"sqlite:///{tmp_path / 's.db'}", "--json", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert rows and all(r["metric"] == "mse" and r["higher_is_better"] is False for r in rows)
    for r in rows:
        low, high = r["score_drop_interval"]
        assert low <= r["score_drop"] <= high and r["score_drop_method"] == "bootstrap"
        assert "test_score" in r and "test_score_drop_interval" in r  # the held-out split, scored on the workers
        assert "accuracy" not in r  # no classification columns for a regression
        assert r["score_drop"] == pytest.approx(r["score"] - baseline["accuracy"], abs=1e-5)  # lower is better: worse = higher
    text = run_cli("report", "diabetes", "--storage", f"sqlite:///{tmp_path / 's.db'}", cwd=tmp_path, env=env).stdout
    assert "metric: mse, lower is better" in text and "paired bootstrap, 1000 resamples" in text
    knee = next(r["trial"] for r in rows if r["knee"])
    export = ("export", "diabetes", "--trial", str(knee), "--format", "onnx", "--storage", f"sqlite:///{tmp_path / 's.db'}")
    proc = run_cli(*export, cwd=tmp_path, env=env)  # the database names code: it never runs unasked
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "--code diabetes:DiabetesNet --code diabetes:make_task" in lines[0], proc.stderr
    proc = run_cli(*export, "--code", "diabetes:DiabetesNet", "--code", "diabetes:make_task", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"mse {next(r['score'] for r in rows if r['knee']):.4g}" in proc.stdout and (tmp_path / f"diabetes-trial{knee}.onnx").stat().st_size > 0
    # Resumed: two more trials in the same study, same direction
    proc = run_cli("search", str(config), "--trials", "5", "--no-progress", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = optuna.load_study(study_name="diabetes", storage=f"sqlite:///{tmp_path / 's.db'}")
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) == 5


@pytest.mark.e2e
def test_check_task_passes_a_good_task_and_catches_a_wrong_direction(tmp_path: Path) -> None:
    env = {"PYTHONPATH": os.pathsep.join([str(REGRESSION), str(tmp_path), *sys.path])}
    proc = run_cli("check-task", str(REGRESSION / "study.yaml"), "--workers", "0", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert sum(line.startswith("ok   split") for line in lines) == 3
    assert any(line.startswith("ok   direction") and "trained model is better" in line for line in lines)
    # The same model scored by its squared error, declared higher-is-better: the commonest silent mistake.
    (tmp_path / "wrong_way.py").write_text(
        textwrap.dedent(
            """\
            from diabetes import make_task

            def error(model, batch):
                x, y = batch
                return (model(x) - y) ** 2

            def make():
                task = make_task()
                return {**task, "metric": error, "metric_name": "squared_error", "higher_is_better": True}
            """
        )
    )
    (tmp_path / "wrong.yaml").write_text("task: {model: 'wrong_way:make'}\nsearch: {workers: 0}\n")
    proc = run_cli("check-task", str(tmp_path / "wrong.yaml"), cwd=tmp_path, env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: ") and "set higher_is_better to False" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.e2e
@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir() and not os.environ.get("CI"), reason="apt-get install dataset-fashion-mnist"
)
def test_segmentation_example_ends_in_a_front_scored_by_miou(tmp_path: Path) -> None:
    folder = REPO / "examples" / "segmentation"
    config = _example_config(tmp_path, "fashion_seg:make_quick_task", "fashion_seg:SegNet")
    env = {"PYTHONPATH": os.pathsep.join([str(folder), *sys.path])}
    proc = run_cli("search", str(config), "--no-progress", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "metric miou (higher is better, corpus-level)" in proc.stdout and "val miou" in proc.stdout
    rows = json.loads(run_cli("report", "example", "--storage", f"sqlite:///{tmp_path / 's.db'}", "--json", cwd=tmp_path, env=env).stdout)
    assert rows and all(r["metric"] == "miou" and r["higher_is_better"] for r in rows)
    assert all(0.0 < r["score"] < 1.0 and r["score_drop_method"] == "bootstrap" and "test_score_drop_interval" in r for r in rows)


@pytest.mark.e2e
def test_token_example_with_integer_ids_and_a_mask_ends_in_a_front_scored_by_macro_f1(tmp_path: Path) -> None:
    folder = REPO / "examples" / "tokens"
    config = _example_config(tmp_path, "digit_tokens:make_quick_task", "digit_tokens:TokenNet", str(folder / "space.yaml"))
    env = {"PYTHONPATH": os.pathsep.join([str(folder), *sys.path])}
    proc = run_cli("search", str(config), "--no-progress", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "metric macro_f1 (higher is better, corpus-level)" in proc.stdout
    rows = json.loads(run_cli("report", "example", "--storage", f"sqlite:///{tmp_path / 's.db'}", "--json", cwd=tmp_path, env=env).stdout)
    assert rows and all(r["metric"] == "macro_f1" and 0.0 < r["score"] <= 1.0 for r in rows)
    proc = run_cli(
        "export",
        "example",
        "--trial",
        str(rows[0]["trial"]),
        "--format",
        "onnx",
        "--storage",
        f"sqlite:///{tmp_path / 's.db'}",
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 2 and "takes structured inputs" in proc.stderr and "--format acz" in proc.stderr
    assert all(low <= r["score_drop"] <= high for r in rows for low, high in [r["score_drop_interval"]])


@pytest.mark.parametrize("name", ["lraspp_mobilenet_v3_large", "fcn_resnet50"])
def test_torchvision_segmentation_models_are_named_and_keep_their_class_channels(name: str) -> None:
    from autocompress.space import load_space
    from autocompress.tasks import TaskSpec, layer_skeleton

    model, example = layer_skeleton(TaskSpec(model=f"torchvision:{name}", num_classes=5))
    assert model(example)["out"].shape[1] == 5
    space = load_space(None).resolve(model, example)
    classifiers = [n for n, ls in space.layers.items() if ls.weight_shape[0] == 5]
    assert classifiers  # the layers giving one channel per class ...
    for layer in classifiers:  # ... never lose one: the output is resized, yet they are found
        assert space.layers[layer].knobs["sparsity_mode"].choices is None, layer
    assert any(ls.knobs["sparsity_mode"].choices for ls in space.layers.values())  # the rest may


@pytest.mark.e2e
@pytest.mark.parametrize("workers", [0, 2])
def test_python_api_searches_an_in_memory_task_and_exports_from_its_front(tmp_path: Path, workers: int) -> None:
    """``autocompress.search(task=...)`` with objects that exist only in this process (a model
    class and closures defined here): on Ray workers they travel pickled by value."""
    import autocompress

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Linear(6, 32)
            self.out = torch.nn.Linear(32, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(torch.tanh(self.body(x))).squeeze(-1)

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 6, generator=gen)
    y = x[:, 0] - 2 * x[:, 1] + 0.1 * torch.randn(300, generator=gen)
    torch.manual_seed(0)
    model = Tiny()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x[:200]), y[:200]).backward()
        opt.step()

    def split(lo: int, hi: int):  # a closure over tensors held here
        return lambda: [(x[i : i + 25], y[i : i + 25]) for i in range(lo, hi, 25)]

    def make_task() -> dict[str, object]:
        return {
            "model": model,
            "train": split(0, 200),
            "val": split(200, 250),
            "test": split(250, 300),
            "loss": lambda m, b: torch.nn.functional.mse_loss(m(b[0]), b[1]),
            "metric": "mae",
            "example_input": x[:8],
        }

    result = autocompress.search(task=make_task, name=f"api-{workers}", workers=workers, pareto={"max_drop": "50%"}, **_small_search(tmp_path))
    assert result.study.metric_names == ["mae", "size_bytes", "latency_ms"]
    assert result.front and all(r["metric"] == "mae" and not r["higher_is_better"] for r in result.front)
    assert result.knee is not None
    path = result.export(result.knee, tmp_path / "knee.acz")
    assert path.stat().st_size == next(r["size_bytes"] for r in result.front if r["trial"] == result.knee)


def test_an_evaluator_runs_a_protocol_task_with_distillation_over_any_output_structure() -> None:
    """Fine-tuning with the task's loss and distillation to the baseline through a dict output
    (every floating-point leaf matched), scored by the task's metric on val and test."""
    from autocompress.config import FinetuneConfig
    from autocompress.deploy.target import DeployConfig
    from autocompress.evaluate import Evaluator
    from autocompress.plan import CompressionPlan, LayerPlan
    from autocompress.tasks import Task, TaskSpec

    class TwoHeads(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Linear(4, 16)
            self.value = torch.nn.Linear(16, 1)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            h = torch.relu(self.body(x))
            return {"value": self.value(h).squeeze(-1), "hidden": h}

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=gen)
    y = x.sum(dim=1)
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]
    parts = {
        "model": TwoHeads(),
        "train": lambda: batches,
        "val": lambda: batches[:2],
        "test": lambda: batches[2:],
        "loss": lambda m, b: torch.nn.functional.mse_loss(m(b[0])["value"], b[1]),
        "metric": lambda m, b: (m(b[0])["value"] - b[1]).abs(),
        "metric_name": "abs_error",
        "higher_is_better": False,
        "example_input": x[:4],
    }
    protocol = from_parts(parts, "the test task")
    model = parts["model"]
    task = Task(spec=TaskSpec(model="test:two-heads", dataset="test:two-heads"), data=None, state_dict=model.state_dict(), protocol=protocol)
    protocol.architecture = lambda **_: TwoHeads()
    evaluator = Evaluator(task, FinetuneConfig(steps=12, distill=0.5), DeployConfig(max_seconds=0.05), device="cpu")
    result = evaluator.evaluate(CompressionPlan({"body": LayerPlan(sparsity=0.5, bits=4), "value": LayerPlan(sparsity=0.0, bits=8)}))
    assert result.error is None, result.error
    assert result.ok and result.finetune_steps == 12 and all(math.isfinite(v) for v in result.finetune_log)
    val = unpack_rows(result.val_scores)
    assert val is not None and val.shape == (32,) and result.accuracy == pytest.approx(float(val.mean()), rel=1e-5)
    assert result.test_score is not None and unpack_rows(result.test_scores) is not None


def test_chance_level_is_the_best_constant_prediction_in_the_metric_direction() -> None:
    from autocompress.baseline import Baseline

    y = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([6.0])]
    assert builtin_metric("mse").constant(y) == pytest.approx(float(torch.tensor([1.0, 2.0, 3.0, 6.0]).var(unbiased=False)))  # type: ignore[misc]
    assert builtin_metric("mae").constant(y) == pytest.approx((1 + 0 + 1 + 4) / 4)  # type: ignore[misc]  # median 2 (torch's lower median)
    labels = [torch.tensor([0, 0, 1]), torch.tensor([2, 0])]
    assert builtin_metric("accuracy").constant(labels) == pytest.approx(0.6)  # type: ignore[misc]
    assert builtin_metric("top2").constant(labels) == pytest.approx(0.8)  # type: ignore[misc]
    assert builtin_metric("macro_f1", {"num_classes": 3}).constant(labels) == pytest.approx((2 * 3 / (2 * 3 + 2)) / 3)  # type: ignore[misc]
    mse = {"name": "mse", "higher_is_better": False, "scale": 1.0}
    base = Baseline.of({"accuracy": 0.5, "size_bytes": 100, "latency_ms": 1.0, "metric": mse, "chance_score": 0.9})
    assert base.at_chance(0.95) and base.at_chance(0.9) and not base.at_chance(0.6)  # lower is better: 0.6 beats the constant
    f1 = {"name": "macro_f1", "higher_is_better": True, "scale": 1.0, "corpus": True}
    base = Baseline.of({"accuracy": 0.8, "size_bytes": 100, "latency_ms": 1.0, "metric": f1, "chance_score": 0.1})
    assert base.at_chance(0.05) and not base.at_chance(0.5)


def test_check_task_refuses_a_validation_split_that_shuffles_each_time() -> None:
    from autocompress.check_task import run_checks

    def shuffled():
        order = torch.randperm(40)  # unseeded: another order each time it is opened
        x = torch.arange(40.0)[order].unsqueeze(1)
        return [(x[i : i + 10], x[i : i + 10].squeeze(1)) for i in range(0, 40, 10)]

    def fixed():
        x = torch.arange(40.0).unsqueeze(1)
        return [(x[i : i + 10], x[i : i + 10].squeeze(1)) for i in range(0, 40, 10)]

    model = torch.nn.Linear(1, 1)
    base = {"model": model, "train": fixed, "test": fixed, "metric": "mse", "loss": lambda m, b: ((m(b[0]).squeeze(1) - b[1]) ** 2).mean()}
    checks = run_checks(from_parts({**base, "val": shuffled, "example_input": torch.zeros(2, 1)}, "t"), model, None, direction=False)
    assert not checks[-1].ok and checks[-1].name == "order of 'val'" and "same samples in the same order" in checks[-1].detail
    checks = run_checks(from_parts({**base, "val": fixed, "example_input": torch.zeros(2, 1)}, "t"), model, None, direction=False)
    assert all(c.ok for c in checks) and any(c.name == "order" for c in checks)


@pytest.mark.e2e
def test_a_corpus_metric_of_the_users_own_gets_its_interval_from_the_driver(tmp_path: Path) -> None:
    """The analyser never imports a user's reduce: the driver, which holds the task, computes
    the paired bootstrap when it stores each trial, and the report reads it."""
    import autocompress

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(240, 5, generator=gen)
    y = (x[:, 0] + x[:, 1] > 0).long()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[:160]), y[:160]).backward()
        opt.step()

    def counts(m: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        hit = m(batch[0]).argmax(dim=1) == 1
        return torch.stack([(hit & (batch[1] == 1)).float(), (batch[1] == 1).float()], dim=1)  # true positives, positives

    def recall(rows: np.ndarray) -> float:
        return float(rows[:, 0].sum() / max(rows[:, 1].sum(), 1.0))

    def split(lo: int, hi: int):
        return lambda: [(x[i : i + 40], y[i : i + 40]) for i in range(lo, hi, 40)]

    task = {"model": model, "train": split(0, 160), "val": split(160, 200), "test": split(200, 240), "metric": counts,
            "metric_reduce": recall, "metric_name": "recall", "higher_is_better": True, "example_input": x[:4]}  # fmt: skip
    result = autocompress.search(task=task, name="recall", pareto={"max_drop": "100%"}, **_small_search(tmp_path))
    assert result.front and all(r["metric"] == "recall" for r in result.front)
    for r in result.front:
        low, high = r["score_drop_interval"]
        assert r["score_drop_method"] == "bootstrap" and low <= r["score_drop"] <= high
