"""Runtimes a compressed model ships to: one registry, one deployed form per model.

``RUNTIMES.get(name)().deploy(...)`` turns a baked model into what that runtime runs (the module
itself, or the ONNX file in an ONNX Runtime or OpenVINO session) bound to an example batch; the
evaluator measures accuracy with :meth:`Deployed.predict` and latency with
:meth:`Deployed.run_block`, so both numbers come from the form that ships.
"""

from __future__ import annotations

import collections
import contextlib
import os
import tempfile
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autocompress.deploy.kernel_choice import session_options, slower_in_int8
from autocompress.deploy.onnx_export import INPUT, export_fp32, to_onnx
from autocompress.deploy.onnx_graph import joined_to_learned_tokens
from autocompress.deploy.timing import time_paired
from autocompress.errors import DeployError
from autocompress.plan import CompressionPlan
from autocompress.registry import Registry

# The int8-or-float race of a whole model (a choice, not a reported number): paired, within 5%
# or this many seconds.
CHOICE_THRESHOLD, CHOICE_SECONDS = 0.05, 1.0
# Ops of an int8 deploy (what its optimized graph shows): integer arithmetic, and 4-bit weights.
INTEGER_OPS = (
    "QLinearConv",
    "QLinearMatMul",
    "QGemm",
    "MatMulInteger",
    "ConvInteger",
    "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul",
    "QLinearAdd",
    "MatMulNBits",
)


class Deployed(ABC):
    """A model in the form its runtime runs, bound to one example batch for timing."""

    backend: str = ""  # what runs, e.g. "onnxruntime 1.32 int8 cpu [QLinearConv x2, QGemm x2]"
    onnx: bytes | None = None  # the file loaded, for ONNX-based runtimes

    @abstractmethod
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch, on the CPU."""

    @abstractmethod
    def run_block(self, n: int) -> float:
        """Seconds for ``n`` forward passes on the bound example, device work finished."""


class Runtime(ABC):
    """One deploy runtime. :meth:`check` runs before a search starts (a missing package or an
    unsupported device is an error then, not in every trial); :meth:`deploy` once per model."""

    @abstractmethod
    def check(self, precision: str, device: str) -> None:
        """Raise DeployError when this runtime cannot run ``precision`` on ``device`` here."""

    @abstractmethod
    def deploy(
        self,
        model: nn.Module,
        plan: CompressionPlan,
        example: torch.Tensor,
        precision: str,
        device: str,
        threads: int = 1,
        calibration: Iterable[torch.Tensor] = (),
    ) -> Deployed:
        """The deployed form of a baked model (``example``: the timed batch, on any device)."""

    def load_onnx(self, data: bytes, example: torch.Tensor, device: str, threads: int = 1, precision: str = "") -> Deployed:
        """A deployed form from an ONNX file (ONNX-based runtimes; for timing on another node)."""
        raise DeployError(f"runtime {type(self).__name__} does not load ONNX files")


RUNTIMES: Registry[type[Runtime]] = Registry("runtime")


# ---- PyTorch ---------------------------------------------------------------------------------


class _TorchDeployed(Deployed):
    def __init__(self, model: nn.Module, example: Any, backend: str) -> None:
        from autocompress.tasks.protocol import first_tensor

        self.model = model.eval()
        self.example = example  # a tensor, or a protocol task's tuple or mapping of inputs
        self.backend = backend
        first = first_tensor(example)
        self.device = first.device if first is not None else torch.device("cpu")
        self.cuda = self.device.type == "cuda"

    def _forward(self) -> Any:
        from autocompress.tasks.metrics import call_model

        return call_model(self.model, self.example)

    @torch.inference_mode()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.device)).float().cpu()

    @torch.inference_mode()
    def run_block(self, n: int) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if self.cuda:  # GPU work is asynchronous: time it with events after a sync
                torch.cuda.synchronize(self.device)
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(n):
                    self._forward()
                end.record()
                end.synchronize()
                return start.elapsed_time(end) / 1e3
            t0 = time.perf_counter()
            for _ in range(n):
                self._forward()
            return time.perf_counter() - t0


@RUNTIMES.register("torch")
class TorchRuntime(Runtime):
    """The baked ``nn.Module`` in eager PyTorch. int8: PyTorch's dynamic int8 kernels for the
    Linear layers at <= 8 bits (CPU only); convolutions stay float32."""

    def check(self, precision: str, device: str) -> None:
        if precision == "int8" and device == "cuda":
            raise DeployError(
                "deploy.precision int8 with runtime torch runs PyTorch's dynamic int8 kernels, which are CPU-only: "
                "use deploy.device cpu, or deploy.runtime onnxruntime for int8 on a GPU"
            )

    def deploy(self, model, plan, example, precision, device, threads=1, calibration=()):
        from autocompress.compress.fold import fold, following_batchnorms
        from autocompress.kernels import int8_model

        # Inference fuses every conv -> BatchNorm pair (ONNX exporters and runtimes do it too); done
        # for the baseline and every trial alike, so no plan is credited with a free fusion.
        for conv, bn_name in following_batchnorms(model).items():
            fold(model, conv, bn_name)
        from autocompress.tasks.protocol import first_tensor

        first = first_tensor(example)
        where = "cpu" if first is None or first.device.type == "cpu" else first.device.type
        backend = f"torch fp32 {where}"
        if precision == "int8" and where == "cpu":
            quantized, linear_layers = int8_model(model, plan)
            if linear_layers:
                rest = "+fp32" if any(isinstance(m, (nn.Linear, nn.Conv2d)) for m in quantized.modules()) else ""
                return _TorchDeployed(quantized, example, f"torch int8-dynamic[{','.join(linear_layers)}]{rest} cpu")
        return _TorchDeployed(model, example, backend)


# ---- ONNX Runtime ----------------------------------------------------------------------------


def _numpy(x: torch.Tensor) -> np.ndarray:  # float32, or token ids as the integers they are
    return np.ascontiguousarray((x.float() if x.is_floating_point() else x).detach().cpu().numpy())


class _SessionDeployed(Deployed):
    """Shared by the ONNX-based runtimes: a callable on numpy batches."""

    def __init__(self, example: torch.Tensor, backend: str, onnx: bytes) -> None:
        self.example = _numpy(example)
        self.backend = backend
        self.onnx = onnx

    @abstractmethod
    def _run(self, x: np.ndarray) -> np.ndarray: ...

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self._run(_numpy(x)), dtype=np.float32))

    def run_block(self, n: int) -> float:
        x = self.example
        t0 = time.perf_counter()
        for _ in range(n):
            self._run(x)
        return time.perf_counter() - t0


class _OrtDeployed(_SessionDeployed):
    def __init__(self, session, example: torch.Tensor, backend: str, onnx: bytes) -> None:
        super().__init__(example, backend, onnx)
        self.session = session

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {INPUT: x})[0]


def _export(model, plan, example, precision, calibration) -> bytes:
    data, _ = to_onnx(model, plan, example, precision, calibration)
    return data


def float_layers(threads: int, found: dict[str, float] | None = None) -> Any:
    """``keep_float`` for an int8 export to ONNX Runtime on the CPU: the layers whose integer
    kernels time slower than float here (recorded in ``found``, weight -> time ratio)."""

    def choose(proto: Any, weights: dict[str, Any], shape: tuple[int, ...]) -> list[str]:
        slower = slower_in_int8(proto, weights, shape, threads)
        if found is not None:
            found.update(slower)
        return list(slower)

    return choose


def integer_kernels(optimized_graph_ops: Iterable[str]) -> str:
    """``QLinearConv x2, QGemm x2``: the integer kernels an optimized graph runs."""
    counts = collections.Counter(op for op in optimized_graph_ops if op in INTEGER_OPS)
    return ", ".join(f"{op} x{k}" for op, k in sorted(counts.items()))


@RUNTIMES.register("onnxruntime")
class OnnxRuntime(Runtime):
    """The trial's ONNX file in an ONNX Runtime session (CPU, or CUDA where the CUDA provider is
    installed), all graph optimizations on, ``threads`` intra-op threads."""

    def check(self, precision: str, device: str) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise DeployError("deploy.runtime onnxruntime needs the onnxruntime package: pip install onnxruntime") from None
        if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise DeployError(
                "deploy.device cuda with onnxruntime needs its CUDA provider (pip install onnxruntime-gpu); "
                f"this install has {', '.join(ort.get_available_providers())}: use deploy.device cpu"
            )

    def deploy(self, model, plan, example, precision, device, threads=1, calibration=()):
        if precision != "int8" or device != "cpu":
            return self.load_onnx(_export(model, plan, example, precision, calibration), example, device, threads, precision)
        # int8 on the CPU: integer kernels where they pay. Each layer is timed both ways alone
        # (kernel_choice), and the whole model, so chosen, against the same plan on float kernels
        # (the int8 codes folded at load): ONNX Runtime moves a QuantizeLinear up through pooling,
        # which can run a pooling op on uint8 in NCHW, slower than a model with no integer layer.
        floats: dict[str, float] = {}
        exported = export_fp32(model, example)  # once: both forms rewrite their own copy
        twin = type(exported)()
        twin.CopyFrom(exported)
        data, stored = to_onnx(model, plan, example, "int8", calibration, keep_float=float_layers(threads, floats), exported=exported)
        plain = self.load_onnx(to_onnx(model, plan, example, "fp32", exported=twin)[0], example, device, threads, "fp32")
        if not stored:  # no layer at <= 8 bits, or none faster on integer kernels: the codes ship, folded at load
            if floats:
                plain.backend += " (every layer's integer kernel timed slower here)"
            return plain
        mixed = self.load_onnx(data, example, device, threads, precision)
        race = time_paired(plain, mixed, CHOICE_THRESHOLD, CHOICE_SECONDS)
        if race.ratio >= 1.0:
            plain.backend += f" (its integer kernels took {race.ratio:.2f}x the float model's time here)"
            return plain
        if floats:  # say which layers run float on this int8 target, and why
            names = [n.removesuffix(".weight") for n in floats]
            shown = ", ".join(names[:4]) + (f" +{len(names) - 4}" if len(names) > 4 else "")
            mixed.backend += f" (float where integer kernels are slower: {shown})"
        return mixed

    def load_onnx(self, data: bytes, example: torch.Tensor, device: str, threads: int = 1, precision: str = "") -> Deployed:
        import onnx
        import onnxruntime as ort

        options = session_options(threads)
        try:
            activations_quantized = any(n.op_type == "QuantizeLinear" for n in onnx.load_from_string(data).graph.node)
        except Exception as exc:  # noqa: BLE001  protobuf's decode errors
            raise DeployError(f"ONNX Runtime cannot load the exported model: not an ONNX file ({type(exc).__name__})") from None
        if precision == "fp32" or not activations_quantized:
            # Float kernels (the fp32 target, or an int8 target's plan that ran faster on them):
            # fold the weights' DequantizeLinear into float constants when the session loads (the
            # file keeps the integer codes; no dequantize per call, and NCHWc convolutions).
            options.add_session_config_entry("session.disable_quant_qdq", "1")
        else:
            # 4-bit MatMul weights (blockwise INT4) fuse into MatMulNBits. Its default accuracy
            # level quantizes their activations to int8 blocks; level 1 computes in float, as the
            # trial evaluated them, and took 407 us against level 4's 656 us on a ViT MLP layer
            # here (1 thread, batch 32 x 50 tokens, 128 -> 256).
            options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        with tempfile.TemporaryDirectory() as tmp:
            options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")  # to read the kernels chosen
            try:
                session = ort.InferenceSession(data, options, providers=providers)
            except Exception as exc:  # noqa: BLE001  ORT raises its own exception types
                raise DeployError(f"ONNX Runtime cannot load the exported model: {str(exc).splitlines()[0][:200]}") from None
            ops = (
                [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
                if os.path.exists(options.optimized_model_filepath)
                else []
            )
        kernels = integer_kernels(ops)
        precision = "int8" if kernels else "fp32"  # what runs: a model with no layer at <= 8 bits stays float
        backend = f"onnxruntime {ort.__version__} {precision} {device}" + (f" [{kernels}]" if kernels else "")
        return _OrtDeployed(session, example, backend, data)


# ---- OpenVINO --------------------------------------------------------------------------------


class _OvDeployed(_SessionDeployed):
    def __init__(self, compiled, example: torch.Tensor, backend: str, onnx: bytes) -> None:
        super().__init__(example, backend, onnx)
        self.request = compiled.create_infer_request()

    def _run(self, x: np.ndarray) -> np.ndarray:
        self.request.infer({0: x})
        return self.request.get_output_tensor(0).data.copy()


@RUNTIMES.register("openvino")
class OpenVinoRuntime(Runtime):
    """The trial's ONNX file compiled by OpenVINO for the CPU (QDQ pairs become its int8
    FakeQuantize ops), latency hint, one stream, ``threads`` inference threads."""

    def check(self, precision: str, device: str) -> None:
        try:
            import openvino  # noqa: F401
        except ImportError:
            raise DeployError("deploy.runtime openvino needs the openvino package: pip install 'autocompress[openvino]'") from None
        if device == "cuda":
            raise DeployError("deploy.runtime openvino runs on the CPU here, not on CUDA GPUs: use deploy.device cpu, or runtime onnxruntime")

    def deploy(self, model, plan, example, precision, device, threads=1, calibration=()):
        found: list[str] = []

        def keep_float(proto: Any, weights: dict[str, Any], shape: tuple[int, ...]) -> list[str]:
            found.extend(joined_to_learned_tokens(proto, weights, shape))
            return found

        data, _ = to_onnx(model, plan, example, precision, calibration, keep_float=keep_float)
        deployed = self.load_onnx(data, example, device, threads, precision)
        if found:
            names = ", ".join(n.removesuffix(".weight") for n in found)
            deployed.backend += f" (float where OpenVINO's int8 is wrong: {names}, joined to a learned token)"
        return deployed

    def load_onnx(self, data: bytes, example: torch.Tensor, device: str, threads: int = 1, precision: str = "") -> Deployed:
        import openvino as ov

        core = ov.Core()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            path.write_bytes(data)
            try:
                model = core.read_model(str(path))
                # f32 hint: OpenVINO may otherwise run float layers in bf16 on CPUs that have it,
                # and the numbers would be another model's; int8 layers still run integer kernels.
                compiled = core.compile_model(
                    model,
                    "CPU",
                    {
                        "INFERENCE_NUM_THREADS": threads,
                        "PERFORMANCE_HINT": "LATENCY",
                        "NUM_STREAMS": 1,
                        "INFERENCE_PRECISION_HINT": "f32",
                    },
                )
            except Exception as exc:  # noqa: BLE001  OpenVINO raises RuntimeError subclasses of its own
                raise DeployError(f"OpenVINO cannot compile the exported model: {str(exc).splitlines()[0][:200]}") from None
        precision = precision or "fp32"
        return _OvDeployed(compiled, example, f"openvino {ov.__version__.split('-')[0]} {precision} cpu", data)


def deployed_correct(
    deployed: Deployed,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 512,
    turn: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext,
) -> np.ndarray:
    """Which of ``(x, y)`` a deployed form gets right (top-1), one bool per input; each batch runs
    inside one ``turn()`` (a device lock's shared turn in a worker)."""
    right = []
    for i in range(0, len(x), batch_size):
        with turn():
            logits = deployed.predict(x[i : i + batch_size])
        right.append((logits.argmax(dim=1) == y[i : i + batch_size].cpu()).numpy())
    return np.concatenate(right) if right else np.zeros(0, dtype=bool)


def runtime(name: str) -> Runtime:
    return RUNTIMES.get(name)()
