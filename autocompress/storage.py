"""Study storage: an Optuna RDBStorage from a URL, with errors that never show a password."""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import optuna
import sqlalchemy.exc
from sqlalchemy.engine import make_url

from autocompress.errors import StorageError

DEFAULT_STORAGE = "sqlite:///studies/autocompress.db"

T = TypeVar("T")
# What two processes creating the same new database's tables at once see: both find the tables
# missing, and the slower one's CREATE or version INSERT collides with the faster one's.
_CREATION_RACE = ("already exists", "unique constraint", "duplicate key", "database is locked")


SECRET_QUERY_KEYS = ("password", "passwd", "pwd", "sslpassword", "sslkey")


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***, safe to print, log and store.

    Read as text, not parsed: a password holding an unescaped ``@`` or ``/`` still ends at the
    last ``@`` before the host, and ``?password=`` query parameters are masked too.
    """
    scheme, sep, rest = url.partition("://")
    authority, slash, path = url.partition("/")
    if not sep and "@" in authority:  # a schemeless address (user:pass@host:port)
        credentials, _, host = authority.rpartition("@")
        user, colon, _ = credentials.partition(":")
        return f"{user}:***@{host}{slash}{path}" if colon else url
    if sep and not scheme.startswith("sqlite"):  # a file path may hold '@'; only a server URL has credentials
        netloc, slash, tail = rest.partition("/")
        if "@" in tail.partition("?")[0] and "@" not in netloc:  # an unescaped / inside the password
            head, _, after = rest.rpartition("@")
            netloc, slash, tail = f"{head}@{after.partition('/')[0]}", "/" if "/" in after else "", after.partition("/")[2]
        if "@" in netloc:
            credentials, _, host = netloc.rpartition("@")
            user, colon, _ = credentials.partition(":")
            netloc = f"{user}:***@{host}" if colon else f"{user}@{host}"
        url = f"{scheme}{sep}{netloc}{slash}{tail}"
    pattern = r"(?i)([?&](?:" + "|".join(SECRET_QUERY_KEYS) + r")=)[^&]*"
    return re.sub(pattern, r"\1***", url)


def sqlite_path(url: str) -> Path | None:
    """The database file of a sqlite URL; None for other backends and in-memory databases."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


def check_url(url: str) -> None:
    """Reject a malformed URL before anything is created or connected to."""
    scheme, _, rest = url.partition("://")
    netloc, _, tail = rest.partition("/")
    slash_in_password = not scheme.startswith("sqlite") and netloc and "@" not in netloc and "@" in tail.partition("?")[0]
    if netloc.count("@") > 1 or slash_in_password:
        # Parsed, the password's tail would become the host and appear in the driver's errors.
        raise StorageError(
            f"the password in the storage URL '{mask_url(url)}' holds an unescaped '@' or '/': percent-encode them as %40 and %2F "
            "(or leave the password out of the URL and set PGPASSWORD)"
        )
    try:
        make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError) as exc:
        port = " (the port is not a number)" if isinstance(exc, ValueError) else ""
        raise StorageError(
            f"malformed storage URL '{mask_url(url)}'{port} (--storage): use e.g. "
            "sqlite:///studies/autocompress.db or postgresql://user:password@host:5432/db"
        ) from None


def open_storage(url: str, create: bool = True) -> optuna.storages.RDBStorage:
    """Open (and for sqlite with ``create``, create) the storage behind ``url``."""
    check_url(url)
    path = sqlite_path(url)
    if path is not None:
        if not create and not path.is_file():
            where = "" if path.is_absolute() else f", a relative path taken from the current folder {os.getcwd()}"
            raise StorageError(
                f"no database at {path} ({mask_url(url)}{where}): run a search first, run from the folder the search ran in, "
                "or pass --storage with an absolute path (sqlite:////abs/path.db)"
            )
        _check_sqlite_folder(path, url)
    engine_kwargs = {}
    if make_url(url).get_backend_name() == "postgresql":
        engine_kwargs = {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
    try:
        storage = retry_creation(lambda: optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs))
        if path is not None:
            _fast_sqlite(storage.engine)
        return storage
    except ImportError as exc:
        missing = getattr(exc.__cause__, "name", None) or "its database driver"
        raise StorageError(
            f"storage {mask_url(url)} needs the Python module '{missing}', which is not installed: "
            "pip install 'autocompress[postgres]' (PostgreSQL) or the driver for your database"
        ) from None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        reason = reason.replace(url, mask_url(url))
        raise StorageError(f"cannot open storage {mask_url(url)}: {reason}: check the URL and that the server is up") from None


def retry_creation(create: Callable[[], T], attempts: int = 6) -> T:
    """``create()``, tried again when it lost a race with another process creating the same
    tables (two drivers started at once on a new database); the second try finds them made."""
    for attempt in range(attempts):
        try:
            return create()
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError, sqlalchemy.exc.ProgrammingError) as exc:
            if attempt == attempts - 1 or not any(s in str(exc).lower() for s in _CREATION_RACE):
                raise
            time.sleep(random.uniform(0.1, 0.5) * (attempt + 1))  # jitter: the racers must not collide again
    raise AssertionError("unreachable")


def _check_sqlite_folder(path: Path, url: str) -> None:
    """Only the project's own default folder is created; any other must exist and be writable."""
    folder = path.parent
    if not folder.is_dir():
        if folder != Path(DEFAULT_STORAGE.removeprefix("sqlite:///")).parent:
            raise StorageError(f"folder '{folder}' for the database does not exist ({mask_url(url)}): create it, or fix the path")
        folder.mkdir(parents=True, exist_ok=True)  # studies/, next to the study configs
    if not path.exists() and not os.access(folder, os.W_OK | os.X_OK):
        raise StorageError(f"cannot create the database in '{folder}': the folder is not writable ({mask_url(url)}): pick another --storage")
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise StorageError(f"the database {path} is not readable and writable by this user ({mask_url(url)}): fix its permissions")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _fast_sqlite(engine: sqlalchemy.engine.Engine) -> None:
    """Write-ahead logging with NORMAL sync: Optuna commits once per parameter and attribute
    (about 30 commits a trial), and in the default rollback mode each commit waits for two
    fsyncs. In WAL mode a crash can lose the last commits but never corrupts the file, and
    readers (optuna-dashboard) no longer block the driver."""
    sqlalchemy.event.listen(engine, "connect", _sqlite_pragmas)
    engine.dispose()  # connections made before the listener reopen with it


def load_study(storage: optuna.storages.BaseStorage, name: str, url: str) -> optuna.Study:
    """Load an existing study or fail naming the ones that do exist."""
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [s.study_name for s in storage.get_all_studies()]
        known = ", ".join(names) if names else "none"
        raise StorageError(f"no study named '{name}' in {mask_url(url)}: studies there are {known}") from None
