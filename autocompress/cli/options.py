"""Options and helpers every command shares: the storage URL, the config file, the hidden
``--debug`` after the command, and opening a study by name."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autocompress.storage import DEFAULT_STORAGE

Handler = Callable[[argparse.Namespace], int]
Subparsers = Any  # argparse's _SubParsersAction, private in typeshed

# Said wherever a storage URL is taken: a URL means the same to every tool (optuna-dashboard, psql).
RELATIVE_SQLITE = "a relative sqlite path is taken from the current folder, not the config's"


def add_storage(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage", help=f"SQLAlchemy URL; {RELATIVE_SQLITE} (default: {DEFAULT_STORAGE})")


def add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="study config YAML (default: studies/default.yaml, else built-in defaults)")


def add_code(parser: argparse.ArgumentParser) -> None:
    """``--code``: the user code a command may import for a study that names it (never unasked)."""
    parser.add_argument(
        "--code",
        action="append",
        metavar="MODULE:FUNCTION",
        help="run this task function, dataset or build hook of the study's (repeat for each); code named in a database never runs unasked",
    )


def add_debug(parser: argparse.ArgumentParser) -> None:
    """``--debug`` after the command too (``autocompress search --debug``)."""
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def open_study(name: str, storage: str | None):
    from autocompress.config import load_config
    from autocompress.report import check_study
    from autocompress.storage import load_study, open_storage

    url = storage or load_config(None).storage
    study = load_study(open_storage(url, create=False), name, url)
    check_study(study)
    return study


def not_the_database(output: str, storage: str | None, flag: str) -> None:
    """An output path may never be the study's own SQLite file, --force or not."""
    from autocompress.config import load_config
    from autocompress.errors import StorageError
    from autocompress.storage import sqlite_path

    db = sqlite_path(storage or load_config(None).storage)
    if db is not None and Path(output).resolve() == db.resolve():
        raise StorageError(f"'{output}' is the study database itself ({flag}): pick another path")
