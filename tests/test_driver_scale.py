"""The driver's incremental analysis against a full recomputation, on a real study grown by the
real Driver with the benchmark's synthetic runner (instant results; Optuna, SQLite and the
project's tables all real)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa

from autocompress.config import load_config
from autocompress.pareto import study_analysis
from autocompress.search import Driver
from benchmarks.driver_scale import SyntheticRunner, study_file


def _last_snapshot(url: str) -> tuple[list[int], float, int]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        n = conn.execute(sa.text("SELECT MAX(snapshot) FROM autocompress_front")).scalar_one()
        front = [r[0] for r in conn.execute(sa.text("SELECT trial_number FROM autocompress_front WHERE snapshot = :n"), {"n": n})]
        hv = conn.execute(sa.text("SELECT hypervolume FROM autocompress_hypervolume WHERE n_complete = :n"), {"n": n}).scalar_one()
    engine.dispose()
    return sorted(front), hv, n


def test_the_driver_s_incremental_front_equals_a_full_analysis_and_survives_a_resume(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'scale.db'}"
    for target in (30, 60):  # the second run resumes: its state is rebuilt from the stored trials
        config = load_config(study_file(tmp_path, url, "random", target))
        driver = Driver(config, runner=SyntheticRunner(capacity=4), progress=False)
        study = driver.run()
        full = study_analysis(study)
        front, hv, n = _last_snapshot(url)
        assert n == target == len(full.points)
        assert front == sorted(full.front) and len(front) > 1
        assert hv == pytest.approx(full.hypervolume, rel=1e-12)
        assert {"ask", "sample", "tell", "artifacts", "analysis", "tables"} <= set(driver.timings)  # each part was timed
    assert len(optuna.load_study(study_name="scale", storage=url).trials) == 60
