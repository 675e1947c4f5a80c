"""Export a trial's packed model (as packed, or as the ONNX file it was measured on) and inspect artifacts."""

from __future__ import annotations

import math
from collections.abc import Collection
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from autocompress import _optuna, artifact
from autocompress.artifact.header import Artifact, payload_bytes
from autocompress.artifact.loader import task_example
from autocompress.artifact.schema import SPANS
from autocompress.artifact_store import read_artifact
from autocompress.errors import ArtifactError, StorageError, TaskError
from autocompress.outputs import check_output, write_atomic


def trial_artifact(study: optuna.Study, number: int) -> bytes:
    """The packed model a COMPLETE trial evaluated, read from the study's artifact store."""
    return read_trial(study, number)[0]


def read_trial(study: optuna.Study, number: int, trial: optuna.trial.FrozenTrial | None = None) -> tuple[bytes, Artifact]:
    """A COMPLETE trial's packed model: its bytes and the ``Artifact`` they were read into, once;
    ``trial``: the frozen trial when the caller has read it already."""
    trial = trial or _optuna.trials_by_number(study, [number]).get(number)
    if trial is None:
        last = max((t.number for t in _optuna.trial_rows(study)), default=None)
        raise StorageError(f"study '{study.study_name}' has no trial {number} (trials are 0..{last}): pick one from 'autocompress report'")
    if trial.state != TrialState.COMPLETE:
        reason = trial.user_attrs.get("fail_reason") or trial.user_attrs.get("prune_reason") or ""
        raise StorageError(
            f"trial {number} of study '{study.study_name}' is {trial.state.name}{': ' + reason if reason else ''}; "
            "only COMPLETE trials have a model to export"
        )
    artifact_id = trial.user_attrs.get("artifact_id")
    folder = study.user_attrs.get("artifact_dir")
    if not artifact_id or not folder:
        raise StorageError(f"trial {number} of study '{study.study_name}' has no stored artifact; it predates artifact export")
    data = read_artifact(folder, artifact_id, f"the artifact of trial {number}")
    return data, Artifact.read(data, f"trial {number}'s artifact")  # a damaged file is refused, never handed on


FORMATS = ("acz", "onnx")


def export_trial(
    study: optuna.Study,
    number: int,
    output: str | Path | None,
    fmt: str = "acz",
    precision: str | None = None,
    force: bool = False,
    code: Collection[str] = (),
) -> tuple[Path, str]:
    """Write a trial's model as ``acz`` (the packed artifact, exactly what was sized) or ``onnx``;
    returns the path and how the file came to be."""
    if fmt not in FORMATS:
        raise ArtifactError(f"unknown export format '{fmt}' (--format): use one of {', '.join(FORMATS)}")
    path = Path(output) if output else Path(f"{study.study_name}-trial{number}.{fmt}")
    check_output(path, force)  # before any work: nothing is exported to be thrown away
    trial = _optuna.trials_by_number(study, [number]).get(number)  # read once (not study.trials: a deep copy of every trial)
    data, packed = read_trial(study, number, trial)
    how = "the packed artifact the search sized"
    if fmt == "onnx":
        data, how = trial_onnx(study, number, packed, precision, trial, code)
    write_atomic(path, data, force)
    return path, how


def study_deploy(study: optuna.Study) -> dict[str, Any]:
    """The deploy section a study was measured with (older studies: the torch fp32 default)."""
    from autocompress.deploy.target import DeployConfig

    config = study.user_attrs.get("config") or {}
    return config.get("deploy") or {**DeployConfig().__dict__}


def trial_onnx(
    study: optuna.Study,
    number: int,
    packed: bytes | Artifact,
    precision: str | None,
    trial: optuna.trial.FrozenTrial | None = None,
    code: Collection[str] = (),
) -> tuple[bytes, str]:
    """A trial's ONNX file: the one its numbers were measured on when the study deployed to an
    ONNX runtime at this precision, else exported from its packed artifact."""
    from autocompress.deploy.onnx_export import calibration_batches, to_onnx
    from autocompress.deploy.runtimes import float_layers
    from autocompress.plan import CompressionPlan

    deploy = study_deploy(study)
    precision = precision or (deploy["precision"] if deploy["runtime"] != "torch" else "fp32")
    if not isinstance(packed, Artifact):
        packed = Artifact.read(packed, f"trial {number}'s artifact")
    header = packed.header
    if header["task"].get("inputs", "float tensor") not in ("float tensor", "token ids"):
        raise ArtifactError(
            f"trial {number}'s model takes {header['task']['inputs']} inputs (its task's example_input), and the ONNX export "
            "traces one tensor (floats or token ids): export it with --format acz and load it with autocompress.load(FILE, build=...)"
        )
    if "inputs" in header["task"] and precision == "int8":
        raise ArtifactError(
            f"trial {number} belongs to a task whose data opens on the workers only, and an int8 export calibrates on its training "
            "data here: export it with --precision fp32"
        )
    plan = CompressionPlan.from_dict(header["plan"])
    if precision == "int8" and not any(lp.integer_codes for lp in plan.layers.values()):
        raise ArtifactError(
            f"trial {number} has no layer at 8 bits or fewer, so nothing in it runs as int8 (--precision int8): "
            "export it with --precision fp32, or pick a trial with quantized layers"
        )
    trial = trial or _optuna.trials_by_number(study, [number])[number]  # not study.trials: a deep copy of every trial
    stored = trial.user_attrs.get("onnx_artifact_id")
    if stored and deploy["runtime"] != "torch" and deploy["precision"] == precision:
        data = read_artifact(study.user_attrs["artifact_dir"], stored, f"the ONNX file of trial {number}")
        return data, f"the file measured on {deploy['runtime']} {precision}"
    model = artifact.loads(packed, build=study_build(study, code))
    example = task_example(header["task"], deploy.get("batch_size", 32))
    calibration: list[torch.Tensor] = []
    if precision == "int8":
        from autocompress.tasks import load_data

        spec = study_task(study, code).resolved()
        calibration = calibration_batches(load_data(spec).x_train, spec.seed, deploy.get("calibration_batches", 8), deploy.get("batch_size", 32))
    # Exported for ONNX Runtime: the layers whose integer kernels time slower here stay float, as
    # in the study's own int8 deploy (its whole-model race aside: the file asked for is int8).
    keep_float = float_layers(deploy.get("threads", 1)) if precision == "int8" and deploy["runtime"] == "onnxruntime" else None
    data, _ = to_onnx(model, plan, example, precision, calibration, keep_float=keep_float)
    return data, f"exported from the packed artifact ({precision})"


def describe(path: str | Path) -> dict[str, Any]:
    """What an artifact holds: task, plan, per-tensor encodings and sizes."""
    path = Path(path)
    data = artifact.read_file(path)
    # Described from the header alone: inspecting a file inflates no payload, builds no model and runs no code.
    header, _ = artifact.read_header(data, str(path), payload=False)
    tensors = []
    for t in header["tensors"]:
        stored = sum(t[k][1] for k in SPANS if k in t)
        tensors.append(
            {"name": t["name"], "shape": t["shape"], "kind": t["kind"], "encoding": t.get("enc", "raw"), "bits": t.get("bits"), "bytes": stored}
        )
    return {
        "file": str(path),
        "size_bytes": len(data),
        "unpacked_bytes": payload_bytes(header),
        "codec": artifact.codec_of(data),
        "format": header["format"],
        "task": header["task"],
        "plan": header["plan"],
        "channels_removed": header.get("channels_removed", {}),
        "bn_folded": header.get("bn_folded", {}),
        "params": sum(math.prod(t["shape"]) for t in header["tensors"] if t["kind"] != "raw" or _is_parameter(t["name"])),
        "tensors": tensors,
    }


def _is_parameter(name: str) -> bool:
    """Whether a raw tensor is a parameter (a bias, a norm's scale) rather than a buffer."""
    return not name.endswith(("running_mean", "running_var", "num_batches_tracked"))


def study_build(study: optuna.Study, code: Collection[str] = ()):
    """The architecture factory of a study's own model, from the task the study was run with
    (the user's config, not a file's header): its build hook when it has one; None for built-in
    and torchvision models. User code runs only as ``study_task`` allows."""
    from autocompress.tasks.custom import architecture

    return architecture(study_task(study, code))


def study_task(study: optuna.Study, code: Collection[str] = ()):
    """The task a study was run with, read from its attribute (the one parse of it per command),
    for a command that will build its model or open its data.

    Whoever can write a shared study database could name any ``module:function`` there, so user
    code the stored task names (its model, dataset or build hook) is imported only when the
    person running the command names it too (``code``: ``--code`` or the study's config)."""
    from autocompress.tasks import TaskSpec
    from autocompress.tasks.custom import IN_MEMORY, is_custom

    spec = TaskSpec.from_dict(study.user_attrs.get("task") or {})
    named = {name: key for key, name in (("task.build", spec.build), ("task.dataset", spec.dataset), ("task.model", spec.model)) if name}
    unasked = [name for name in named if is_custom(name) and name not in IN_MEMORY and name not in code]
    if unasked:
        which = ", ".join(f"'{name}' ({named[name]})" for name in unasked)
        raise TaskError(
            f"study '{study.study_name}' was run with user code {which}, and code named in a database never runs unasked: "
            f"pass {' '.join(f'--code {name}' for name in unasked)} to run it here"
        )
    return spec


def task_code(spec: Any) -> set[str]:
    """The user code a task of the user's own config names: what a command run with that config
    may import when a study it reads names the same."""
    return {name for name in (spec.model, spec.dataset, spec.build) if name}
