"""One registry per extension point, keyed by the name users type in configs.

Registering a name twice raises; looking up an unknown name raises a ``UserError`` that lists
the valid names. Prefix entries (``torchvision:`` and ``timm:``) resolve any name that starts
with the prefix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, TypeVar

from .errors import UserError, shown

T = TypeVar("T")


@dataclass
class Entry(Generic[T]):
    """A registered object with the pydantic model of its config keys (or None) and a summary."""

    name: str
    obj: T
    params: Any = None  # a pydantic model class validating the entry's own config keys
    summary: str = ""
    prefix: bool = False  # True: the name is a prefix ("torchvision:") that takes a suffix


@dataclass
class Registry(Generic[T]):
    """Maps names to builders. ``kind`` names the extension point in error messages."""

    kind: str
    _entries: dict[str, Entry[T]] = field(default_factory=dict)

    def register(
        self, name: str, *, params: Any = None, summary: str = "", prefix: bool = False
    ) -> Callable[[T], T]:
        """Decorator: ``@MODELS.register("cnn", params=CNNParams)``."""

        def deco(obj: T) -> T:
            self.add(name, obj, params=params, summary=summary, prefix=prefix)
            return obj

        return deco

    def add(self, name: str, obj: T, *, params: Any = None, summary: str = "", prefix: bool = False) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        if not summary and getattr(obj, "__doc__", None):
            summary = (obj.__doc__ or "").strip().splitlines()[0]
        self._entries[name] = Entry(name, obj, params, summary, prefix)

    def entry(self, name: str, where: str = "") -> Entry[T]:
        """The entry for ``name``; unknown names raise a UserError listing the valid ones."""
        if name in self._entries and not self._entries[name].prefix:
            return self._entries[name]
        for key, e in self._entries.items():
            if e.prefix and name.startswith(key) and len(name) > len(key):
                return e
        at = f" in {where}" if where else ""
        raise UserError(
            f"unknown {self.kind} {shown(name)}{at}. Valid {self.kind} names: {', '.join(self.names())}."
        )

    def get(self, name: str, where: str = "") -> T:
        return self.entry(name, where).obj

    def names(self) -> list[str]:
        return [(n + "<name>") if e.prefix else n for n, e in self._entries.items()]

    def __contains__(self, name: str) -> bool:
        try:
            self.entry(name)
            return True
        except UserError:
            return False

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries.values())
