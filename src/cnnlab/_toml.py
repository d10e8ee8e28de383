"""Reading TOML files and flattening them to key paths: what the config (``cnnlab.config``) and
the readers of run directories (``cnnlab.catalog``: ``cnnlab runs``, ``cnnlab compare``) share.
Kept apart from ``cnnlab.config`` so that the listings read a run's config.toml without building
the config's pydantic models (0.15 s of a 0.5 s ``cnnlab runs``)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from .errors import UserError

__all__ = ["TOML_MAX_BYTES", "read_toml", "parse_toml", "flatten"]

TOML_MAX_BYTES = 10_000_000  # an experiment or sweep file is a few kB; past this it is not one


def read_toml(path: str | Path) -> dict[str, Any]:
    """A config file's TOML as a dict; anything that is not a readable TOML file of sensible size
    and nesting is a UserError naming it."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"config file {str(p)!r} does not exist.")
    if p.is_dir():
        raise UserError(f"{str(p)!r} is a directory; expected an experiment .toml file.")
    if not p.is_file():  # a FIFO would block the read
        raise UserError(f"{str(p)!r} is not a regular file (a FIFO, socket or device); expected an experiment .toml file.")
    if p.stat().st_size > TOML_MAX_BYTES:
        raise UserError(f"{str(p)!r} is {p.stat().st_size:,} bytes: not an experiment file (at most {TOML_MAX_BYTES:,}).")
    try:
        return parse_toml(p.read_text(encoding="utf-8-sig"), str(p))  # -sig: a leading BOM (Windows editors)
    except UnicodeDecodeError:
        raise UserError(f"{str(p)!r} is not a UTF-8 text file; expected an experiment .toml file.") from None


def parse_toml(text: str, where: str) -> dict[str, Any]:
    """TOML text as a dict; a syntax error, or nesting too deep to parse, is a UserError."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"TOML syntax error in {where}: {e}.") from None
    except RecursionError:
        raise UserError(f"{where} nests arrays or tables too deeply to read; a config needs a few levels.") from None


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested dict as key paths: ``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}`` (the form of
    ``--set`` keys; lists are values, not descended into)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
