"""The model's dependency graph (Torch-Pruning's, one traced forward pass) and what it tells:
the group that removing a layer's output channels drags along, which layers can lose channels
consistently, and which layers produce the model's output. Channel pruning and the importance
criteria both read the graph from here; a criterion scores a group it is handed."""

from __future__ import annotations

import contextlib
import copy
import signal
import threading
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from autocompress.compress._base import COMPRESSIBLE_TYPES
from autocompress.compress.lowrank import Factorized
from autocompress.compress.sites import Attention, attention_of, out_linear


def out_layer(layer: nn.Module) -> nn.Linear | nn.Conv2d | nn.Embedding:
    """The module whose output channels are the layer's (the second factor when factorized)."""
    if isinstance(layer, Factorized):
        return layer.second
    assert isinstance(layer, COMPRESSIBLE_TYPES)
    return layer


def dependency_graph(model: nn.Module, example: torch.Tensor) -> Any:
    """Torch-Pruning's dependency graph of ``model`` (one traced forward pass)."""
    import torch_pruning as tp

    return tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)


def pruning_group(graph: Any, target: nn.Module, idxs: list[int]) -> Any:
    """The group that removing output channels ``idxs`` of ``target`` drags along."""
    import torch_pruning as tp

    fn = tp.prune_conv_out_channels if isinstance(target, nn.Conv2d) else tp.prune_linear_out_channels
    return graph.get_pruning_group(target, fn, idxs=idxs)


def remove_channels(model: nn.Module, target: nn.Module, idxs: list[int], example: torch.Tensor, graph: Any = None) -> None:
    """Remove output channels ``idxs`` of ``target`` and everything that depends on them
    (``graph``: the model's dependency graph when the caller traced it already). Channels of an
    attention's q projection go in whole heads, with their k, v and output-projection weights."""
    owner = head_owner(model, target)
    if owner is not None:
        owner.remove_heads(sorted({i // owner.head_dim for i in idxs}))
        return
    pruning_group(graph if graph is not None else dependency_graph(model, example), target, idxs).prune()


def head_owner(model: nn.Module, target: nn.Module) -> Attention | None:
    """The attention whose q projection ``target`` is (its channels are pruned in whole heads)."""
    for module in model.modules():
        if isinstance(module, Attention) and out_linear(module.q_proj) is target:
            return module
    return None


def channel_prunable(model: nn.Module, example: torch.Tensor) -> tuple[set[str], dict[str, str]]:
    """Names of the Linear/Conv2d layers whose output channels can be removed consistently, and
    why each other one cannot.

    Raises what Torch-Pruning raises when it cannot build the graph at all (ShuffleNet's channel
    shuffle). A layer the graph cannot follow (the output projection of ``nn.MultiheadAttention``,
    whose weight the attention reads without calling the module) is left out with the reason, and
    the rest keep channel pruning. So is a layer whose channels feed a grouped (not depthwise)
    conv: arbitrary channel indices would break the groups.
    """
    graph = dependency_graph(model, example)
    ok, refused = set(), {}
    checked: dict[tuple[Any, ...], str | None] = {}  # a group's shape -> why removing its channels breaks the model
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding):
            refused[name] = EMBEDDING_CHANNELS
            continue
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        found = attention_of(model, name)
        if found is not None and found[1] != "out_proj":
            attention, role = found
            if role != "q_proj":
                refused[name] = "channels kept: removed in whole heads with its attention's q_proj"
            elif attention.num_heads < 2:
                refused[name] = "channels kept: its attention has one head, and heads are removed whole"
            else:
                ok.add(name)  # whole heads: the attention keeps its projections consistent itself
            continue
        try:
            with _time_limit(GROUP_SECONDS):
                group = pruning_group(graph, module, [0])
        except (_OutOfTime, MemoryError):
            refused[name] = f"channels kept: Torch-Pruning's graph did not resolve its group within {GROUP_SECONDS} s"
            continue
        except Exception as exc:  # noqa: BLE001  (Torch-Pruning raises many kinds on structures it cannot follow)
            refused[name] = f"channels kept: Torch-Pruning's graph cannot follow it ({_first_line(exc)})"
            continue
        if any(_grouped(dep.target.module) for dep, _ in group):
            refused[name] = "channels kept: they feed a grouped conv"
            continue
        if _needs_trial(group):
            key = _shape_of(group)
            if key not in checked:
                checked[key] = _breaks_forward(model, name, example)
            if checked[key] is not None:
                refused[name] = f"channels kept: removing them breaks the model's forward pass ({checked[key]})"
                continue
        ok.add(name)
    return ok, refused


EMBEDDING_CHANNELS = "channels kept: an embedding's channels are the model's width (its rows are tokens)"

# Torch-Pruning resolves a group in well under a second, but Swin's patch merging (a concat of
# four strided slices) ran 76 s and grew to 6.8 GB before failing: a group gets this long.
GROUP_SECONDS = 10


class _OutOfTime(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise _OutOfTime in the block after ``seconds`` (a timer signal: the main thread only;
    elsewhere the block runs unbounded)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise _OutOfTime

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# What Torch-Pruning prunes by itself, exactly: a group holding anything else (an attention
# module, a parameter the model uses directly, a module of the model's own) is pruned once on a
# copy and run, because the model may read a width from an attribute: torchvision's ViT reshapes
# by its hidden_dim, so removing embedding channels passed the graph and broke every forward.
_TRUSTED = (nn.Conv2d, nn.Conv1d, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def _needs_trial(group: Any) -> bool:
    """A group that reaches a reshape (a model may split channels into heads by an attribute, as
    MaxViT's attention does) or anything Torch-Pruning does not prune by itself exactly."""
    for dep, _ in group:
        target = dep.target.module
        if type(target).__name__ == "_ReshapeOp" or not (isinstance(target, _TRUSTED) or type(target).__module__ == "torch_pruning.ops"):
            return True
    return False


def _shape_of(group: Any) -> tuple[Any, ...]:
    """What a group is made of (types, weight shapes, how each is pruned): the twelve MLP groups
    of ViT-B's blocks are one shape, tried once (each trial copies and traces the model)."""
    parts = []
    for dep, _ in group:
        target = dep.target.module
        weight = getattr(target, "weight", None)
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else tuple(getattr(target, "shape", ()))
        parts.append((type(target).__name__, shape, getattr(dep.handler, "__name__", str(dep.handler))))
    return tuple(sorted(parts, key=str))


def _breaks_forward(model: nn.Module, name: str, example: Any) -> str | None:
    """Why a copy of ``model`` with one output channel of layer ``name`` removed fails to run, or None."""
    from autocompress.tasks.metrics import call_model

    trial = copy.deepcopy(model)
    try:
        with _time_limit(GROUP_SECONDS):  # the copy's graph is traced and grouped again
            remove_channels(trial, dict(trial.named_modules())[name], [0], example)
            with torch.no_grad():
                call_model(trial.eval(), example)
    except _OutOfTime:
        return f"not removed within {GROUP_SECONDS} s on a copy"
    except Exception as exc:  # noqa: BLE001  whatever the model raises on a width it did not expect
        return _first_line(exc)
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:120]}" if text else type(exc).__name__


def _grouped(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1 and not (module.groups == module.in_channels == module.out_channels)


def output_layers(model: nn.Module, example: Any) -> set[nn.Module]:
    """The Linear/Conv2d modules whose output is the model's output (pruning their channels
    would change the classes or the predicted values), from one forward pass: those whose
    output is an output tensor or a view of one (a squeeze shares its storage); when none is
    (the output was resized, as segmentation models do), the last such module to run."""
    return forward_facts(model, example)[0]


def forward_facts(model: nn.Module, example: Any) -> tuple[set[nn.Module], set[nn.Module]]:
    """From one forward pass: the output layers (``output_layers``) and the layers the model
    calls as modules. A layer it never calls has its weight read directly (the output projection
    of ``nn.MultiheadAttention``, Swin's q/k/v): replacing the module changes nothing there."""
    from autocompress.tasks.metrics import call_model
    from autocompress.tasks.protocol import tensor_leaves

    produced: list[tuple[nn.Module, torch.Tensor]] = []
    handles = [m.register_forward_hook(lambda m, i, o: produced.append((m, o))) for m in model.modules() if isinstance(m, COMPRESSIBLE_TYPES)]
    try:
        with torch.no_grad():
            output = call_model(model, example)
    finally:
        for handle in handles:
            handle.remove()
    leaves = tensor_leaves(output)
    storages = {t.untyped_storage().data_ptr() for t in leaves}
    found = {m for m, o in produced if isinstance(o, torch.Tensor) and (any(o is t for t in leaves) or o.untyped_storage().data_ptr() in storages)}
    if not found and produced and leaves:
        # Resized (interpolated) outputs: the last layers to run that give the output's channels
        # (LR-ASPP adds two such classifiers).
        channels = leaves[0].shape[1] if leaves[0].dim() > 1 else None
        for module, out in reversed(produced):
            if not isinstance(out, torch.Tensor) or out.dim() < 2 or out.shape[1] != channels:
                break
            found.add(module)
        found = found or {produced[-1][0]}
    return found, {m for m, _ in produced}
