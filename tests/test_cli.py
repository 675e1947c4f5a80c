"""The CLI as a separate process: help texts, and one mistake end to end (exit 2, one line)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import run_cli


@pytest.mark.parametrize("command", ["search", "report", "export", "inspect", "layers", "sensitivity"])
def test_every_command_has_help_with_examples(tmp_path: Path, command: str) -> None:
    proc = run_cli(command, "--help", cwd=tmp_path, timeout=60)
    assert proc.returncode == 0 and "examples:" in proc.stdout


def test_a_mistake_in_a_real_process_is_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("serch: {trials: 3}\n")
    proc = run_cli("search", str(tmp_path / "bad.yaml"), cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "did you mean 'search'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "studies").exists()


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("serch: {trials: 3}\n")
    proc = run_cli("--debug", "search", str(tmp_path / "bad.yaml"), cwd=tmp_path, timeout=120)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "ConfigError" in proc.stderr
