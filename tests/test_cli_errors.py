"""Bad input: one line naming the file, key or layer and the fix; exit 2; no traceback; no study."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import REPO, run_cli

SPACE = str(REPO / "search_spaces/default.yaml")


def _config(folder: Path, body: str) -> str:
    path = folder / "bad.yaml"
    path.write_text(f"storage: sqlite:///{folder / 'bad.db'}\n{body}")
    return str(path)


CASES = {
    "missing config file": (lambda d: ["search", str(d / "nope.yaml")], "nope.yaml"),
    "unknown top-level key": (lambda d: ["search", _config(d, "trails: 3\n")], "'trails'"),
    "unknown model": (lambda d: ["search", _config(d, "task: {model: resnet9000}\n")], "resnet9000"),
    "sparsity out of range": (lambda d: ["search", _config(d, f"space: {_space(d, 'knobs: {sparsity: 1.5}')}\n")], "sparsity 1.5"),
    "one-bit weights": (lambda d: ["search", _config(d, f"space: {_space(d, 'knobs: {bits: [1, 8]}')}\n")], "1 bits"),
    "rank zero": (lambda d: ["search", _config(d, f"space: {_space(d, 'knobs: {rank: 0}')}\n")], "rank 0"),
    "glob matches no layer": (lambda d: ["search", _config(d, f"space: {_space(d, 'layers: [fc7]')}\n")], "'fc7'"),
    "missing space file": (lambda d: ["search", _config(d, "space: nowhere.yaml\n")], "nowhere.yaml"),
    "zero trials flag": (lambda d: ["search", _config(d, ""), "--trials", "0"], "--trials"),
    "unknown sampler flag": (lambda d: ["search", _config(d, ""), "--sampler", "cmaes"], "cmaes"),
    "malformed storage URL": (lambda d: ["search", _config(d, ""), "--storage", "not a url"], "malformed storage URL"),
    "report of a missing database": (lambda d: ["report", "x", "--storage", f"sqlite:///{d / 'bad.db'}"], "no database"),
    "export of a missing study": (lambda d: ["export", "x", "--trial", "0", "--storage", _empty_db(d)], "no study named 'x'"),
    "inspect a file that is no artifact": (lambda d: ["inspect", _space(d, "knobs: {}")], "not an autocompress artifact"),
    "inspect a missing file": (lambda d: ["inspect", str(d / "gone.acz")], "gone.acz"),
    "layers of an unknown model": (lambda d: ["layers", "digits-cnnn"], "did you mean 'digits-cnn'"),
}


def _empty_db(folder: Path) -> str:
    """A real database with no studies, under another name than the one checked below."""
    import optuna

    url = f"sqlite:///{folder / 'empty.db'}"
    optuna.storages.RDBStorage(url)
    return url


def _space(folder: Path, body: str) -> str:
    path = folder / "space.yaml"
    path.write_text(body)
    return str(path)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_clear_line_and_exit_2(tmp_path: Path, case: str) -> None:
    make_args, needle = CASES[case]
    proc = run_cli(*make_args(tmp_path), cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and needle in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "bad.db").exists()  # no study, not even an empty database


def test_help_has_examples(tmp_path: Path) -> None:
    proc = run_cli("search", "--help", cwd=tmp_path, timeout=60)
    assert proc.returncode == 0 and "examples:" in proc.stdout and "--trials" in proc.stdout
