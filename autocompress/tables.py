"""The analyser's own SQL tables, next to Optuna's in the study database.

Schema (version 1), keyed by Optuna's ``studies.study_id`` and trial numbers:

``autocompress_schema``      one row: ``version``
``autocompress_layers``      one row per COMPLETE trial and layer: ``study_id, trial_number,
                             layer, type, params, nonzeros, sparsity, structured, bits, rank,
                             bytes``
``autocompress_hypervolume`` one row per COMPLETE trial: ``study_id, n_complete,
                             trial_number, hypervolume`` (the hypervolume after that trial)
``autocompress_front``       the front after each COMPLETE trial: ``study_id, snapshot
                             (= n_complete), trial_number, accuracy, accuracy_drop, size_bytes,
                             compression_ratio, latency_ms, speedup, feasible, knee``
``autocompress_sensitivity`` one row per group, knob and probed value: ``study_id, grp, knob,
                             value, accuracy, drop_points, size_bytes, size_delta,
                             latency_ratio`` (one-shot, see ``sensitivity``)
``autocompress_drivers``     one lease per driver process: ``driver_id, study_id, host, pid,
                             started_at, heartbeat_at, finished`` (times: Unix seconds)

Only the driver (and ``autocompress report``, for trials finished before these tables existed)
writes them; workers never do. See docs/ARCHITECTURE.md for example queries.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from autocompress.errors import StorageError
from autocompress.pareto import Analysis

SCHEMA_VERSION = 1
metadata = sa.MetaData()

schema = sa.Table("autocompress_schema", metadata, sa.Column("version", sa.Integer, nullable=False))
layers = sa.Table(
    "autocompress_layers",
    metadata,
    sa.Column("study_id", sa.Integer, primary_key=True),
    sa.Column("trial_number", sa.Integer, primary_key=True),
    sa.Column("layer", sa.String(512), primary_key=True),
    sa.Column("type", sa.String(32)),
    sa.Column("params", sa.BigInteger),
    sa.Column("nonzeros", sa.BigInteger),
    sa.Column("sparsity", sa.Float),
    sa.Column("structured", sa.Boolean),
    sa.Column("bits", sa.Integer),
    sa.Column("rank", sa.Integer, nullable=True),
    sa.Column("bytes", sa.BigInteger),
)
hypervolume = sa.Table(
    "autocompress_hypervolume",
    metadata,
    sa.Column("study_id", sa.Integer, primary_key=True),
    sa.Column("n_complete", sa.Integer, primary_key=True),
    sa.Column("trial_number", sa.Integer),
    sa.Column("hypervolume", sa.Float),
)
front = sa.Table(
    "autocompress_front",
    metadata,
    sa.Column("study_id", sa.Integer, primary_key=True),
    sa.Column("snapshot", sa.Integer, primary_key=True),
    sa.Column("trial_number", sa.Integer, primary_key=True),
    sa.Column("accuracy", sa.Float),
    sa.Column("accuracy_drop", sa.Float),
    sa.Column("size_bytes", sa.BigInteger),
    sa.Column("compression_ratio", sa.Float),
    sa.Column("latency_ms", sa.Float),
    sa.Column("speedup", sa.Float),
    sa.Column("feasible", sa.Boolean),
    sa.Column("knee", sa.Boolean),
)

sensitivity = sa.Table(
    "autocompress_sensitivity",
    metadata,
    sa.Column("study_id", sa.Integer, primary_key=True),
    sa.Column("grp", sa.String(512), primary_key=True),
    sa.Column("knob", sa.String(32), primary_key=True),
    sa.Column("value", sa.Float, primary_key=True),
    sa.Column("accuracy", sa.Float),
    sa.Column("drop_points", sa.Float),
    sa.Column("size_bytes", sa.BigInteger),
    sa.Column("size_delta", sa.BigInteger),
    sa.Column("latency_ratio", sa.Float, nullable=True),
)


drivers = sa.Table(
    "autocompress_drivers",
    metadata,
    sa.Column("driver_id", sa.String(64), primary_key=True),
    sa.Column("study_id", sa.Integer, index=True),
    sa.Column("host", sa.String(255)),
    sa.Column("pid", sa.Integer),
    sa.Column("started_at", sa.Float),
    sa.Column("heartbeat_at", sa.Float),
    sa.Column("finished", sa.Boolean, default=False),
)


def ensure_schema(engine: Engine) -> None:
    """Create the tables if missing; refuse a database written by a newer schema."""
    metadata.create_all(engine)
    with engine.begin() as conn:
        # One statement, so two processes creating a new database at once cannot both insert
        # (SQLite's driver runs a lone SELECT outside the write transaction that follows it).
        missing = ~sa.exists(sa.select(schema.c.version))
        conn.execute(schema.insert().from_select(["version"], sa.select(sa.literal(SCHEMA_VERSION)).where(missing)))
        version = conn.execute(sa.select(sa.func.max(schema.c.version))).scalar()
        if version is not None and version > SCHEMA_VERSION:
            raise StorageError(
                f"the database holds autocompress tables of schema {version}; this version knows {SCHEMA_VERSION}: upgrade autocompress"
            )


def record_trial(engine: Engine, study_id: int, trial_number: int, per_layer: list[dict[str, Any]], plan: dict[str, Any], analysis: Analysis) -> None:
    """Rows for one newly COMPLETE trial: its layers, the hypervolume and the front after it."""
    n_complete = len(analysis.points)
    layer_rows = [
        {
            "study_id": study_id,
            "trial_number": trial_number,
            "layer": r["layer"],
            "type": r["type"],
            "params": r["params"],
            "nonzeros": r["nonzeros"],
            "sparsity": r["sparsity"],
            "structured": bool(plan.get(r["layer"], {}).get("structured", False)),
            "bits": r["bits"],
            "rank": r["rank"],
            "bytes": r.get("bytes"),
        }
        for r in per_layer
    ]
    front_rows = [
        {
            "study_id": study_id,
            "snapshot": n_complete,
            "trial_number": p.trial,
            "accuracy": p.accuracy,
            "accuracy_drop": p.accuracy_drop,
            "size_bytes": p.size_bytes,
            "compression_ratio": p.compression_ratio,
            "latency_ms": p.latency_ms,
            "speedup": p.speedup,
            "feasible": p.feasible,
            "knee": p.trial == analysis.knee,
        }
        for p in (analysis.point(n) for n in analysis.front)
    ]
    with engine.begin() as conn:  # one transaction: all rows of this trial or none
        conn.execute(sa.delete(layers).where(layers.c.study_id == study_id, layers.c.trial_number == trial_number))
        if layer_rows:
            conn.execute(layers.insert(), layer_rows)
        conn.execute(sa.delete(hypervolume).where(hypervolume.c.study_id == study_id, hypervolume.c.n_complete == n_complete))
        conn.execute(
            hypervolume.insert().values(study_id=study_id, n_complete=n_complete, trial_number=trial_number, hypervolume=analysis.hypervolume)
        )
        conn.execute(sa.delete(front).where(front.c.study_id == study_id, front.c.snapshot == n_complete))
        if front_rows:
            conn.execute(front.insert(), front_rows)


def record_sensitivity(engine: Engine, study_id: int, rows: list[dict[str, Any]]) -> None:
    """A study's sensitivity rows (``sensitivity.Row`` as dicts), replacing any before, in one transaction."""
    with engine.begin() as conn:
        conn.execute(sa.delete(sensitivity).where(sensitivity.c.study_id == study_id))
        if rows:
            conn.execute(
                sensitivity.insert(), [{"study_id": study_id, "grp": r["group"], **{k: v for k, v in r.items() if k != "group"}} for r in rows]
            )


def sensitivity_rows(engine: Engine, study_id: int) -> list[dict[str, Any]]:
    """A study's sensitivity rows as dicts (``group`` for ``grp``); empty when none were recorded."""
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(sensitivity.name):
            return []
        rows = conn.execute(sa.select(sensitivity).where(sensitivity.c.study_id == study_id)).mappings().all()
    return [{"group": r["grp"], **{k: r[k] for k in r if k not in ("grp", "study_id")}} for r in rows]


def start_lease(engine: Engine, driver_id: str, study_id: int, host: str, pid: int, now: float) -> None:
    with engine.begin() as conn:
        conn.execute(
            drivers.insert().values(driver_id=driver_id, study_id=study_id, host=host, pid=pid, started_at=now, heartbeat_at=now, finished=False)
        )


def heartbeat(engine: Engine, driver_id: str, now: float, finished: bool = False) -> None:
    with engine.begin() as conn:
        conn.execute(sa.update(drivers).where(drivers.c.driver_id == driver_id).values(heartbeat_at=now, finished=finished))


def leases(engine: Engine, study_id: int) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(drivers).where(drivers.c.study_id == study_id)).mappings().all()
    return {r["driver_id"]: dict(r) for r in rows}


def delete_study_rows(engine: Engine, study_id: int) -> int:
    """Remove a study's rows from every table of the project's own, in one transaction; the count."""
    removed = 0
    with engine.begin() as conn:
        for table in (layers, hypervolume, front, sensitivity, drivers):
            if sa.inspect(conn).has_table(table.name):
                removed += conn.execute(table.delete().where(table.c.study_id == study_id)).rowcount or 0
    return removed
