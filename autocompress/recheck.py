"""The front's re-check on the test split: each shown trial's deployed form scored once, the
numbers stored with the study. The driver calls it at the end of a search and ``report
--recheck`` after one that stopped early; reports only read what it stored."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import optuna
import torch

from autocompress import _optuna, artifact
from autocompress.artifact_store import read_artifact
from autocompress.export import read_trial, study_deploy, study_task
from autocompress.report import checked_analysis, shown_trials


def recheck(study: optuna.Study, code: Collection[str] = ()) -> int:
    """Evaluate on the test split the shown trials that lack it, and store the scores; how many.
    ``code``: the user code the caller names (``export.study_task``)."""
    numbers = shown_trials(study, checked_analysis(study))
    missing = [n for n in numbers if str(n) not in study.user_attrs.get("test_accuracy", {})]
    if missing:
        test_accuracies(study, missing, code)
    return len(missing)


def test_accuracies(study: optuna.Study, numbers: list[int], code: Collection[str] = ()) -> dict[int, float]:
    """Test-split accuracy of the given trials on the study's deploy target, computed once and
    kept in the study.

    The ONNX file a trial was measured on runs in its runtime (the int8 kernels included); a torch
    target runs the packed model as that runtime deploys it. Optuna freezes finished trials, so
    the values live in the study attribute ``test_accuracy`` (trial number -> accuracy), and which
    test images each got right in ``test_correct`` (to pair its drop with the baseline's); later
    reports read them instead of re-evaluating.
    """
    from autocompress.deploy.runtimes import deployed_correct
    from autocompress.stats import accuracy, pack_correct
    from autocompress.tasks import load_data
    from autocompress.tasks.custom import architecture

    stored: dict[str, float] = dict(study.user_attrs.get("test_accuracy", {}))
    correct: dict[str, str] = dict(study.user_attrs.get("test_correct", {}))
    missing = [n for n in numbers if str(n) not in stored]
    trials = _optuna.trials_by_number(study, missing) if missing else {}
    if missing and "val_scores" in study.user_attrs.get("baseline", {}):
        # A protocol task's data opens only on the workers: each trial's test score was taken
        # there with its validation score, and is read here, never recomputed.
        for n in missing:
            score = trials[n].user_attrs.get("test_score")
            if isinstance(score, (int, float)):
                stored[str(n)] = float(score)
        study.set_user_attr("test_accuracy", stored)
    elif missing:
        spec = study_task(study, code)
        data = load_data(spec.resolved())
        build = architecture(spec)  # from the task the study recorded, once for every trial
        for n in missing:
            right = deployed_correct(_deployed_on_cpu(study, trials[n], data.x_test[:1], build), data.x_test, data.y_test)
            stored[str(n)] = accuracy(right)
            correct[str(n)] = pack_correct(right)
        study.set_user_attr("test_correct", correct)
        study.set_user_attr("test_accuracy", stored)  # last: its presence says the re-check is whole
    return {n: stored[str(n)] for n in numbers if str(n) in stored}


def _deployed_on_cpu(study: optuna.Study, trial: optuna.trial.FrozenTrial, example: torch.Tensor, build: Any):
    """A trial in its deployed form on this machine's CPU (reports run where the driver runs)."""
    from autocompress.deploy.runtimes import runtime
    from autocompress.plan import CompressionPlan

    number = trial.number
    deploy = study_deploy(study)
    stored = trial.user_attrs.get("onnx_artifact_id")
    if stored and deploy["runtime"] != "torch":
        data = read_artifact(study.user_attrs["artifact_dir"], stored, f"the ONNX file of trial {number}")
        # ONNX Runtime on the CPU for either ONNX runtime: the file, its kernels, no GPU needed.
        return runtime("onnxruntime").load_onnx(data, example, "cpu", 1, deploy["precision"])
    _, packed = read_trial(study, number, trial)  # read only when it is the form that runs
    header = packed.header
    model = artifact.loads(packed, build=build)
    precision = deploy["precision"] if deploy["runtime"] == "torch" else "fp32"
    return runtime("torch").deploy(model, CompressionPlan.from_dict(header["plan"]), example, precision, "cpu")
