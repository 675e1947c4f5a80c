"""Devices: ``auto``, ``cpu`` or ``cuda`` resolved where the work runs, with the reason when
one cannot be used. Setup checks, runners and the evaluator all resolve through here."""

from __future__ import annotations

import socket

import torch

from autocompress.errors import AutocompressError


def resolve_device(name: str, flag: str = "--device") -> torch.device:
    """``auto`` is the GPU when this process sees one (a Ray actor sees one only when it reserved
    it with ``--gpus-per-worker``), else the CPU. ``flag`` names the setting in errors."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        why = "this torch build has no CUDA" if torch.version.cuda is None else "no GPU is visible to this process"
        raise AutocompressError(f"device cuda was asked for ({flag}) but {why} on {socket.gethostname()}: use {flag} cpu or auto")
    return torch.device(name)
