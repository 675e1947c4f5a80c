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
        self._families: dict[str, Callable[[str], T]] = {}

    def register_family(self, prefix: str) -> Callable[[Callable[[str], T]], Callable[[str], T]]:
        """Resolve every ``prefix:NAME`` through one function (``torchvision:resnet18``).

        The prefix ``""`` takes any other name with a colon (``package.module:function``).
        The resolver gets the part after the prefix and raises a user-facing error when it
        cannot build the entry.
        """

        def decorator(resolver: Callable[[str], T]) -> Callable[[str], T]:
            if prefix in self._families:
                raise RegistryError(f"{self.kind} family '{prefix}:' is registered twice")
            self._families[prefix] = resolver
            return resolver

        return decorator

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries:
                raise RegistryError(f"{self.kind} '{name}' is registered twice: pick another name")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        if name not in self._entries and ":" in name:
            prefix, _, rest = name.partition(":")
            if prefix in self._families:
                return self._families[prefix](rest)
            if "" in self._families:
                return self._families[""](name)
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            families = "".join(f", {p}:NAME" if p else ", module:function" for p in sorted(self._families))
            raise RegistryError(
                f"unknown {self.kind} '{name}'{did_you_mean(name, self._entries)}: known {self.kind}s are {known}{families}"
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
