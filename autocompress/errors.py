"""One exception root for every mistake a user can make.

The CLI prints ``error: <message>`` and exits with code 2 for any :class:`AutocompressError`;
messages name the file, key or layer at fault and say how to fix it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class AutocompressError(Exception):
    """Base class of all expected, user-facing errors."""


class ConfigError(AutocompressError):
    """A study config or search-space file is malformed or holds a bad value."""


class SpaceError(ConfigError):
    """A search space does not fit the model (a glob matching nothing, a bad rank...)."""


class TaskError(AutocompressError):
    """A task, model or dataset cannot be built."""


class StorageError(AutocompressError):
    """The study storage is unreachable, or the study in it does not fit the request."""


class SearchError(AutocompressError):
    """The search cannot go on (for example, every trial keeps failing)."""


class ArtifactError(AutocompressError):
    """An artifact cannot be written or read."""


class DeployError(AutocompressError):
    """A model cannot be deployed to, or measured on, the deploy target."""


class RegistryError(AutocompressError):
    """A name is not registered."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean 'x'?)' for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
