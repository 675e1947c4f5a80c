"""Reaching Ray: a local instance started (token authentication kept on) or a cluster joined,
a ``deploy.resource`` checked against the cluster, and what Ray raises when a worker is lost."""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

from autocompress.errors import AutocompressError
from autocompress.storage import mask_url

log = logging.getLogger(__name__)


def start_or_join(address: str | None, num_cpus: int) -> bool:
    """Start a local Ray (``num_cpus``) or join ``address``; whether this call started it."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {
        "include_dashboard": False,  # no web UI unless a cluster operator starts one
        "logging_level": logging.ERROR,
        "configure_logging": True,
    }
    if address:
        kwargs["address"] = address
    else:
        # "local" always starts a fresh instance; without it Ray joins whatever cluster
        # /tmp/ray/ray_current_cluster names, even a dead one.
        kwargs["address"] = "local"
        # Ray 2.60 cannot keep a local instance on loopback: its servers listen on every
        # interface and it resolves 127.0.0.1 to the host's address. Its token
        # authentication (on by default) is what refuses other machines.
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
            log.warning(
                "RAY_AUTH_MODE=disabled: the local Ray listens on every interface without authentication; "
                "anyone who reaches this machine can run code in it. Unset RAY_AUTH_MODE to keep token authentication."
            )
        kwargs["num_cpus"] = num_cpus
    try:
        with warnings.catch_warnings():  # Ray Client warns before it raises: the error below says it once
            warnings.filterwarnings("ignore", message="Ray Client connection timed out")
            ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        shown = mask_url(address) if address else "a local Ray instance"
        reason = str(exc).replace(address, shown) if address else str(exc)
        raise AutocompressError(f"cannot start or join Ray ({shown}): {reason}") from None
    return True


def missing_resource(name: str) -> str | None:
    """Why no node of the cluster can serve ``deploy.resource`` ``name`` (None: one can)."""
    import ray

    have = ray.cluster_resources()
    if have.get(name):
        return None
    custom = sorted(k for k in have if k not in ("CPU", "GPU", "memory", "object_store_memory") and not k.startswith("node:"))
    return (
        f"no node of the Ray cluster has the resource '{name}' (deploy.resource; custom resources there: "
        f"{', '.join(custom) or 'none'}): start the target node with ray start --resources '{{\"{name}\": 1}}'"
    )


def lost_worker_errors() -> tuple[type[Exception], ...]:
    """What Ray raises when the worker itself is gone (killed, out of memory, node lost)."""
    import ray

    return (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.ObjectLostError)


def lost_reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'worker died'}"
