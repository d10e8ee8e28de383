"""One registry per extension point, keyed by the name users type in configs.

Registering a name twice raises; looking up an unknown name raises a ``UserError`` that lists
the valid names. Prefix entries (``torchvision:`` and ``timm:``) resolve any name that starts
with the prefix.

An entry can be declared (name, summary, the module that holds its object) before that module is
imported, and bound when it is: a listing or a config check then needs the registry alone, not the
modules behind it (``cnnlab datasets`` lists ``DATASETS`` without importing torch).
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
    obj: T | None  # None: a declared entry whose module is not imported yet
    params: Any = None  # a pydantic model class validating the entry's own config keys
    summary: str = ""
    prefix: bool = False  # True: the name is a prefix ("torchvision:") that takes a suffix
    home: str = ""  # a declared entry: the module that registers its object when imported


@dataclass
class Registry(Generic[T]):
    """Maps names to builders. ``kind`` names the extension point in error messages.
    ``require_declared``: only declared names can be registered (bound), so that a listing of the
    declarations is the whole registry."""

    kind: str
    require_declared: bool = False
    _entries: dict[str, Entry[T]] = field(default_factory=dict)

    def register(
        self, name: str, *, params: Any = None, summary: str = "", prefix: bool = False
    ) -> Callable[[T], T]:
        """Decorator: ``@MODELS.register("cnn", params=CNNParams)``."""

        def deco(obj: T) -> T:
            self.add(name, obj, params=params, summary=summary, prefix=prefix)
            return obj

        return deco

    def declare(self, name: str, *, home: str, summary: str, params: Any = None, prefix: bool = False) -> None:
        """Name an entry whose object module ``home`` registers when it is imported; until then the
        entry is listed and validated (``entry``, ``names``, ``in``), and ``get`` raises."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = Entry(name, None, params, summary, prefix, home)

    def add(self, name: str, obj: T, *, params: Any = None, summary: str = "", prefix: bool = False) -> None:
        declared = self._entries.get(name)
        if declared is not None and declared.home and declared.obj is None:
            self._bind(declared, obj, params=params, summary=summary, prefix=prefix)
            return
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        if self.require_declared:
            raise ValueError(f"{self.kind} {name!r} is not declared: declare it (name, summary, module) where the "
                             f"registry is defined, so that listings show it without importing its module")
        if not summary and getattr(obj, "__doc__", None):
            summary = (obj.__doc__ or "").strip().splitlines()[0]
        self._entries[name] = Entry(name, obj, params, summary, prefix)

    def _bind(self, e: Entry[T], obj: T, *, params: Any, summary: str, prefix: bool) -> None:
        """Give declared entry ``e`` its object, from the module the declaration names."""
        module = getattr(obj, "__module__", None)
        if module != e.home:
            raise ValueError(f"{self.kind} {e.name!r} is declared to live in {e.home}, not in {module}")
        if params is not None or summary or prefix:
            raise ValueError(f"{self.kind} {e.name!r} is declared with its summary, keys and prefix; registering it "
                             f"binds the object only")
        e.obj = obj

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
        e = self.entry(name, where)
        if e.home and e.obj is None:  # a bug of the code that looks it up, not of the config
            raise RuntimeError(f"{self.kind} {e.name!r} is declared but not loaded: importing {e.home} registers it")
        return e.obj

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
