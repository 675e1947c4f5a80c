"""Files a command writes for the user (an exported model, an HTML report), and the synced
write-then-rename they and the study's artifact files share: a failure or a kill leaves the
old file or none, never a half-written one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from autocompress.errors import ArtifactError


def write_then_rename(tmp: Path, data: bytes, final: Path, midway: Callable[[], None] = lambda: None) -> None:
    """Write ``data`` to ``tmp``, sync it, give it a normal file's mode and rename it over
    ``final``; ``midway`` runs when half is written (fault tests stop a process there). On an
    OSError the temporary file is removed and the error raised."""
    try:
        with open(tmp, "wb") as f:
            half = len(data) // 2
            f.write(data[:half])
            f.flush()
            midway()
            f.write(data[half:])
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private
        os.replace(tmp, final)
    except OSError:
        with contextlib.suppress(OSError):  # the folder itself may be what broke
            tmp.unlink(missing_ok=True)
        raise


def check_output(path: str | Path, force: bool = False, flag: str = "-o") -> None:
    """Refuse an output path that would replace something: an existing file (unless ``force``),
    a symbolic link (never written through: its target could be anything), a device, a folder;
    and one whose folder is missing or is a file."""
    path = Path(path)
    if path.is_symlink():
        raise ArtifactError(f"'{path}' is a symbolic link ({flag}); autocompress does not write through links: give the real path")
    if path.exists():
        if not path.is_file():
            raise ArtifactError(f"'{path}' exists and is not a regular file ({flag}): pick a file path")
        if not force:
            raise ArtifactError(f"'{path}' exists ({flag}): pass --force to replace it, or pick another path")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        found = folder if folder.exists() else next((p for p in folder.parents if p.exists()), None)
        if found is not None and not found.is_dir():
            raise ArtifactError(f"'{found}' is a file, not a folder ({flag} {path}): pick a path inside a folder")
        raise ArtifactError(f"folder '{folder}' does not exist ({flag} {path}): create it or pick another path")


def write_atomic(path: str | Path, data: bytes, force: bool = True, flag: str = "-o") -> None:
    """Write via a temporary file and rename, so a failure leaves nothing half-written.

    With ``force=False`` an existing file is refused (``check_output``); links and devices always
    are. ``flag`` is the option the path came from, for messages.
    """
    path = Path(path)
    check_output(path, force, flag)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as exc:
        raise ArtifactError(f"cannot write to '{folder}' ({flag} {path}): {exc.strerror}") from None
    try:
        write_then_rename(Path(tmp), data, path)
    except OSError as exc:
        raise ArtifactError(f"cannot write '{path}': {exc.strerror}") from None
