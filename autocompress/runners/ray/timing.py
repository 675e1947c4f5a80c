"""The timing actor: deployed models timed on the node holding ``deploy.resource`` (hardware
in the loop), started once it has shown it can run the deploy target there."""

from __future__ import annotations

from typing import Any

from autocompress.deploy.target import DeployConfig
from autocompress.errors import AutocompressError
from autocompress.plan import CompressionPlan
from autocompress.tasks import Task, TaskSpec


class TimingActor:
    """Times deployed models on the node holding ``deploy.resource`` (hardware in the loop).

    Evaluator actors send it files (the ONNX file, or the packed artifact for the torch runtime):
    the baseline once, then each candidate, timed paired with it in this node's exclusive slot.
    Its methods run one at a time, so its own measurements never overlap either.
    """

    def __init__(self, deploy: DeployConfig, example: Any, import_paths: list[str], spec: TaskSpec) -> None:
        import sys

        import torch

        from autocompress.deploy.runtimes import runtime
        from autocompress.deploy.timing import DeviceLock, device_key
        from autocompress.devices import resolve_device

        for folder in import_paths:  # a module:function model rebuilds from the driver's folders
            if folder not in sys.path:
                sys.path.append(folder)
        torch.set_num_threads(deploy.threads)
        self.deploy = deploy
        self.device = resolve_device("cpu" if deploy.device == "auto" else deploy.device)
        self.runtime = runtime(deploy.runtime)
        from autocompress.tasks.protocol import to_device

        self.example = to_device(example, self.device)
        self.lock = DeviceLock(device_key(str(self.device)))
        self.baselines: dict[str, Any] = {}  # sha256 of the file -> its deployed form
        self.spec = spec  # the search's own task: what builds a packed artifact's architecture

    def check(self) -> None:
        """Raises here what the runtime lacks on this node."""
        self.runtime.check(self.deploy.precision, self.device.type)

    def _load(self, blob: bytes) -> Any:
        if self.deploy.runtime != "torch":
            return self.runtime.load_onnx(blob, self.example, self.device.type, self.deploy.threads, self.deploy.precision)
        from autocompress import artifact
        from autocompress.tasks.custom import architecture

        packed = artifact.Artifact.read(blob)  # read once: header for the plan, payload for the model
        build = architecture(self.spec)  # from the search's config, never the file
        model = artifact.loads(packed, build=build).to(self.device)
        return self.runtime.deploy(
            model, CompressionPlan.from_dict(packed.header["plan"]), self.example, self.deploy.precision, self.device.type, self.deploy.threads
        )

    def put_baseline(self, digest: str, blob: bytes) -> None:
        if digest not in self.baselines:
            self.baselines[digest] = self._load(blob)

    def time(self, digest: str | None, blob: bytes) -> dict[str, Any]:
        import ray

        from autocompress.deploy.timing import time_alone, time_paired

        candidate = self._load(blob)
        cfg = self.deploy
        with self.lock.exclusive():
            if digest is None:
                timing = time_alone(candidate, cfg.threshold, cfg.max_seconds)
            else:
                timing = time_paired(self.baselines[digest], candidate, cfg.threshold, cfg.max_seconds)
        return {**timing.to_dict(), "node": ray.get_runtime_context().get_node_id()}


def start_timing_actor(task: Task, deploy: DeployConfig) -> Any:
    """The timing actor on a node with ``deploy.resource`` (``connect`` has checked one exists),
    once it has shown that it can run the deploy target there."""
    import ray

    from autocompress.tasks.custom import IMPORT_PATHS

    name = deploy.resource
    assert name is not None
    # A small share of the resource: several searches may time on the same target node, and
    # the node's device lock keeps their measurements apart.
    actor_cls: Any = ray.remote(num_cpus=0, resources={name: 0.01}, max_restarts=1)(TimingActor)
    example = task.protocol.example_input if task.protocol is not None else task.data.x_val[: deploy.batch_size].cpu()  # type: ignore[union-attr]
    actor = actor_cls.remote(deploy, example, list(IMPORT_PATHS), task.spec)
    try:
        ray.get(actor.check.remote(), timeout=600)
    except ray.exceptions.RayTaskError as exc:
        raise AutocompressError(f"the timing node for '{name}' cannot run the deploy target: {exc.cause}") from None
    return actor
