"""The ``autocompress`` command line: the entry point and its error mapping (one line
``error: ...`` and exit code 2 for every expected mistake). Commands live in
``study_commands`` and ``model_commands``; the options they share in ``options``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from autocompress.cli import model_commands, study_commands
from autocompress.cli.options import Handler
from autocompress.errors import AutocompressError


def parser() -> tuple[argparse.ArgumentParser, dict[str, Handler]]:
    """The parser, and each command's handler."""
    p = argparse.ArgumentParser(
        prog="autocompress",
        description="Search per-layer pruning, quantization and low-rank factorization of a PyTorch model "
        "for the best accuracy / size / latency trade-offs.",
        epilog="Run 'autocompress COMMAND --help' for the options and examples of each command.",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fmt = argparse.RawDescriptionHelpFormatter
    commands = {**study_commands.COMMANDS, **model_commands.COMMANDS}
    order = ("search", "report", "dashboard", "export", "inspect", "delete", "sensitivity", "check-task", "layers")
    return p, {name: commands[name](sub, fmt) for name in order}


def main(argv: Sequence[str] | None = None) -> int:
    p, handlers = parser()
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.debug:
        logging.getLogger("optuna").setLevel(logging.WARNING)
    handler = handlers[args.command]
    try:
        return handler(args)
    except AutocompressError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: in-flight trials were marked FAIL (reason 'interrupted'); run the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader stopped early (`report --json | head`): nothing is wrong. Later writes,
        # the interpreter's final flush included, go nowhere instead of failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
