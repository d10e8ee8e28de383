"""Loading an experiment: read, override and validate a config file against the schema
(:mod:`cnnlab.config`) and the registries it names, and write the fully resolved config back.

It sits above the registries (data sets, models, optimizers, schedulers, losses) because the keys
of ``[model]``, ``[train.scheduler]`` and ``[train.loss]`` belong to the chosen entry: they are
validated against that entry's own parameter model, and the resolved config includes its defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomli_w
from pydantic import ValidationError

from ._toml import read_toml
from .config import ExperimentConfig, apply_overrides, drop_none, entry_params, validation_message
from .data import DATASETS
from .errors import UserError
from .models import MODELS
from .train.losses import LOSSES
from .train.optim import OPTIMIZERS, SCHEDULERS


def validate_config(raw: dict[str, Any], source: str = "<config>") -> ExperimentConfig:
    """Validate a raw dict into an ExperimentConfig, including registry-entry keys. ``source``
    names the file (or ``<dict>``) in error messages."""
    try:
        cfg = ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        raise UserError(validation_message(e, source)) from None
    _validate_entry_keys(cfg, source)
    return cfg


def _validate_entry_keys(cfg: ExperimentConfig, source: str) -> None:
    DATASETS.entry(cfg.data.dataset, f"{source} at data.dataset")
    OPTIMIZERS.entry(cfg.train.optimizer, f"{source} at train.optimizer")
    for section, registry, where in (
        (cfg.model, MODELS, "model"),
        (cfg.train.scheduler, SCHEDULERS, "train.scheduler"),
        (cfg.train.loss, LOSSES, "train.loss"),
    ):
        entry = registry.entry(section.name, f"{source} at {where}.name")
        extra = cfg.extra(section)
        if entry.params is None:
            if extra:
                raise UserError(
                    f"invalid configuration in {source}: {registry.kind} {section.name!r} takes no keys, "
                    f"got {', '.join(sorted(extra))} under [{where}]."
                )
            continue
        try:
            entry.params.model_validate(extra)
        except ValidationError as e:
            allowed = ", ".join(entry.params.model_fields)
            raise UserError(
                validation_message(e, source, where)[:-1]
                + f". Keys of {registry.kind} {section.name!r}: "
                + ", ".join([*type(section).model_fields, allowed]) + "."
            ) from None


def load_config(path: str | Path, overrides: list[str] | dict[str, Any] | None = None) -> ExperimentConfig:
    """Read, override and validate an experiment file. Raises UserError on any bad input."""
    raw = apply_overrides(read_toml(path), overrides)
    return validate_config(raw, str(path))


def resolved_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """The fully resolved config as a plain dict: defaults included, registry-entry defaults too,
    ``None`` values dropped (TOML has no null; a dropped key reloads as the same default)."""
    d = cfg.model_dump(mode="json")
    for key, section, registry in (
        ("model", cfg.model, MODELS),
        ("scheduler", cfg.train.scheduler, SCHEDULERS),
        ("loss", cfg.train.loss, LOSSES),
    ):
        params = entry_params(section, registry)
        target = d[key] if key == "model" else d["train"][key]
        if params is not None:
            target.update(params.model_dump(mode="json"))
    return drop_none(d)


def dumps_toml(cfg: ExperimentConfig) -> str:
    """The resolved config as TOML: what a run directory's config.toml holds."""
    return tomli_w.dumps(resolved_dict(cfg))


def with_overrides(cfg: ExperimentConfig, overrides: list[str] | dict[str, Any] | None, source: str) -> ExperimentConfig:
    """``cfg`` with ``overrides`` applied and validated again (``source`` names them in messages)."""
    return validate_config(apply_overrides(resolved_dict(cfg), overrides), source)
