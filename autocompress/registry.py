"""String-keyed registries: one per extension point, shared by the CLI, YAML configs and Python."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from autocompress.errors import RegistryError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects; filled with the :meth:`register` decorator.

    Example::

        MODELS = Registry("model")

        @MODELS.register("digits-mlp")
        def digits_mlp(num_classes: int = 10) -> nn.Module: ...
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind  # what one entry is, for error messages ("model", "technique", ...)
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries:
                raise RegistryError(f"{self.kind} '{name}' is registered twice: pick another name")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise RegistryError(
                f"unknown {self.kind} '{name}'{did_you_mean(name, self._entries)}: known {self.kind}s are {known}"
            ) from None

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style wildcard, sorted."""
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
