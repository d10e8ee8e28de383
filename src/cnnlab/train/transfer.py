"""Transfer learning (``[transfer]``): load weights from a run, a checkpoint or a pretrained
state_dict; freeze and unfreeze modules by glob patterns; keep frozen norm layers with running
statistics (BatchNorm) in eval mode; unfreeze more modules at given epochs. See docs/transfer.md.

Module names are those of ``model.named_modules()`` (``cnnlab models --show NAME`` lists them). A
pattern matches a module when ``fnmatch(name, pattern)``; a matched module's submodules go with
it. ``freeze = "all"`` matches every module, ``"features"`` the ``features`` module.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from .. import rundir as rd
from ..config import TransferConfig
from ..errors import UserError
from ..models import has_running_stats, output_layer
from .callbacks import CALLBACKS, Callback, eval_weights
from .checkpoints import load_checkpoint, load_error_line, refused_global

if TYPE_CHECKING:  # annotations only: the trainer imports this module
    from .trainer import Trainer


@dataclass
class Freezing:
    """Which parts of one model are frozen, owned by the runner and passed to the optimizer, the
    trainer and the unfreeze schedule (nothing is attached to the model).

    ``fixed``: parameters the model keeps fixed by design (airbench's whitening), never unfrozen;
    ``frozen_names``: modules frozen by a pattern and not unfrozen since; ``bn_eval``: the norm
    layers with running statistics (BatchNorm; ``has_running_stats``) whose parameters are all
    frozen (or that have none and are frozen by name), which the trainer puts back in eval mode
    after ``model.train()`` each epoch, so their running statistics do not move. Group, layer and
    instance norm of the ``cnn`` model have none: freezing their weights is all it takes."""

    fixed: frozenset[str] = frozenset()
    frozen_names: set[str] = field(default_factory=set)
    bn_eval: list[nn.Module] = field(default_factory=list)

    def refresh(self, model: nn.Module) -> None:
        """Recompute ``bn_eval`` from the model's current requires_grad flags."""
        self.bn_eval = []
        for name, m in model.named_modules():
            if has_running_stats(m):
                params = list(m.parameters(recurse=False))
                if params and not any(p.requires_grad for p in params):
                    self.bn_eval.append(m)
                elif not params and name in self.frozen_names:
                    self.bn_eval.append(m)

    def set_trainable(self, model: nn.Module, patterns: list[str], trainable: bool) -> int:
        """Set requires_grad of the parameters of modules matched by ``patterns`` (``fixed`` ones stay
        fixed); unfreezing also drops the matched modules from ``frozen_names``. Returns how many
        parameters changed."""
        changed = 0
        for mname, m in model.named_modules():
            if not mname or not any(_covered(mname, p) for p in patterns):
                continue
            for pname, p in m.named_parameters(recurse=False):
                if f"{mname}.{pname}" in self.fixed or p.requires_grad == trainable:
                    continue
                p.requires_grad_(trainable)
                changed += 1
        if trainable:
            self.frozen_names = {n for n in self.frozen_names if not any(_covered(n, p) for p in patterns)}
        self.refresh(model)
        return changed


@dataclass
class Transfer:
    """What :func:`apply_transfer` did: ``record`` for env.json (empty when transfer is off) and the
    model's ``freezing`` (None when transfer is off)."""

    record: dict[str, Any]
    freezing: Freezing | None


# ------------------------------------------------------------------------------------- patterns
def module_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_modules() if n]


def _covered(name: str, pattern: str) -> bool:
    """True when module ``name`` or one of its ancestors matches ``pattern``."""
    parts = name.split(".")
    return any(fnmatch.fnmatchcase(".".join(parts[:i]), pattern) for i in range(1, len(parts) + 1))


def _names_hint(model: nn.Module) -> str:
    names = module_names(model)
    shown = [n for n in names if n.count(".") <= 2][:60]
    more = f" (and {len(names) - len(shown)} deeper; all: cnnlab models --show NAME)" if len(shown) < len(names) else ""
    return ", ".join(shown) + more


def check_patterns(model: nn.Module, patterns: list[str], key: str) -> None:
    """Every pattern must match at least one module name, else a UserError listing the names."""
    names = module_names(model)
    for p in patterns:
        if not any(fnmatch.fnmatchcase(n, p) for n in names):
            raise UserError(f"transfer.{key}: pattern {p!r} matches no module of this model. Module names: "
                            f"{_names_hint(model)}.")


def _freeze_patterns(t: TransferConfig) -> list[str]:
    if isinstance(t.freeze, str):
        return {"none": [], "all": ["*"], "features": ["features"]}.get(t.freeze, [t.freeze])
    return list(t.freeze)


# ---------------------------------------------------------------------------------- sources
def _pretrained_state(t: TransferConfig, download: bool) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A pretrained state_dict by name: ``weights_path`` when set, else torchvision's file from the
    torch hub cache (downloaded when allowed and online), else a UserError saying what to fetch."""
    name = t.init_from or ""
    if t.weights_path:
        p = Path(t.weights_path)
        if problem := rd.path_problem(p):
            raise UserError(f"transfer.weights_path {str(p)!r} {problem}; give a .pt/.pth file of weights.")
        try:
            sd = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:
            refused = refused_global(e)
            if refused is not None:
                raise UserError(f"refused transfer.weights_path {str(p)!r}: it holds a Python object ({refused}) besides "
                                f"tensors, and loading it could run code on this machine; save the state_dict alone "
                                f"(torch.save(model.state_dict(), path)).") from None
            raise UserError(f"cannot read transfer.weights_path {str(p)!r}: {load_error_line(e)}.") from None
        for key in ("state_dict", "model"):
            if isinstance(sd, dict) and isinstance(sd.get(key), dict):
                sd = sd[key]
        if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
            raise UserError(f"transfer.weights_path {str(p)!r} is not a state_dict (a dict of tensors).")
        return sd, {"init_from": name, "weights_path": str(p.resolve())}
    if name.startswith("timm:"):
        raise UserError(f"transfer.init_from = {name!r}: pretrained timm weights are not fetched by cnnlab; save "
                        f"timm.create_model({name[5:]!r}, pretrained=True).state_dict() with torch.save on a machine "
                        f"online and set transfer.weights_path to that file.")
    import torchvision

    arch = name.split(":", 1)[1] if ":" in name else name
    arch, _, wname = arch.partition(".")
    try:
        enum = torchvision.models.get_model_weights(arch)
        weights = enum[wname] if wname else enum.DEFAULT
    except (ValueError, KeyError) as e:
        raise UserError(f"transfer.init_from = {name!r}: no torchvision weights by that name ({e}).") from None
    hub = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if hub.is_file() or download:
        try:
            sd = weights.get_state_dict(progress=False, check_hash=False)
            return sd, {"init_from": name, "weights": str(weights), "url": weights.url}
        except Exception:
            pass
    raise UserError(f"transfer.init_from = {name!r} needs the pretrained weights file {weights.url} (offline: download "
                    f"it elsewhere and put it at {hub}, or anywhere and set transfer.weights_path to it).")


def load_source(t: TransferConfig, download: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, record for env.json) of ``transfer.init_from``."""
    src = t.init_from
    assert src is not None
    p = Path(src)
    if src.startswith(("torchvision:", "timm:")) or (src == "resnet18" and not p.exists()) or (t.weights_path and not p.exists()):
        return _pretrained_state(t, download)
    if not p.exists():
        raise UserError(f"transfer.init_from {src!r} does not exist: give a run directory (runs/<name>/<timestamp>), "
                        f"a checkpoint file, or pretrained weights by name (torchvision:resnet18).")
    record: dict[str, Any] = {"init_from": src}
    if p.is_dir():
        run_dir = rd.require_run_dir(p)
        ckpt_path = rd.checkpoint_path(run_dir, "best")
        record["source_run"] = str(run_dir.resolve())
        env_file = run_dir / rd.ENV
        if env_file.is_file():
            try:
                env = rd.read_json(env_file)
                record["source_env"] = {k: env.get(k) for k in ("git_commit", "started", "cnnlab", "torch", "seed", "device")}
                if "transfer" in env:  # a chain of runs: the source's own source
                    record["source_transfer"] = env["transfer"]
            except UserError:  # a damaged env.json only costs the record its provenance
                pass
    else:
        ckpt_path = p
    state = load_checkpoint(ckpt_path)
    record["checkpoint"] = str(Path(ckpt_path).resolve())
    record["source_epoch"] = state.get("epoch")
    cfg = state.get("config") or {}
    record["source_name"] = cfg.get("name")
    record["source_model"] = (cfg.get("model") or {}).get("name")
    record["source_classes"] = (state.get("meta") or {}).get("class_names")
    return eval_weights(state), record


# ---------------------------------------------------------------------------------- matching
def match_state(model: nn.Module, source: dict[str, torch.Tensor], skip: set[str]) -> dict[str, Any]:
    """Match the model's state entries to ``source`` by name (exact, else the longest source name
    that is a dotted suffix, e.g. ``conv1.weight`` for ``features.body.conv1.weight``) and shape.
    Returns {"load": {target: tensor}, "mismatch": [(name, src shape, model shape)], "new": [...],
    "new_head": [...], "unused": [...]}."""
    target = model.state_dict()
    out: dict[str, Any] = {"load": {}, "mismatch": [], "new": [], "new_head": [], "unused": []}
    used: set[str] = set()
    by_len = sorted(source, key=len, reverse=True)
    for name, tensor in target.items():
        if name in skip:
            out["new_head"].append(name)
            if name in source:
                used.add(name)
            continue
        src = name if name in source else next((s for s in by_len if name.endswith("." + s)), None)
        if src is None:
            out["new"].append(name)
            continue
        used.add(src)
        if tuple(source[src].shape) != tuple(tensor.shape):
            out["mismatch"].append((name, tuple(source[src].shape), tuple(tensor.shape)))
            continue
        out["load"][name] = source[src]
    out["unused"] = [s for s in source if s not in used]
    return out


def print_table(match: dict[str, Any], quiet: bool) -> None:
    """Per module: how many tensors were loaded, skipped for a shape mismatch, new (not in the
    source) or new head; then each mismatch with both shapes."""
    if quiet:
        return
    rows: dict[str, list[int]] = {}
    for col, names in enumerate((list(match["load"]), [m[0] for m in match["mismatch"]], match["new"], match["new_head"])):
        for n in names:
            rows.setdefault(n.rsplit(".", 1)[0] if "." in n else n, [0, 0, 0, 0])[col] += 1
    print("transfer: parameters and buffers by module")
    print(f"  {'module':<40} {'loaded':>7} {'shape mismatch':>15} {'new':>5} {'new head':>9}")
    for mod, c in rows.items():
        print(f"  {mod:<40} {c[0]:>7} {c[1]:>15} {c[2]:>5} {c[3]:>9}")
    for name, s, t in match["mismatch"]:
        print(f"  skipped for shape mismatch: {name} (source {s}, model {t})")
    if match["unused"]:
        print(f"  not used from the source: {', '.join(match['unused'][:20])}"
              f"{' ...' if len(match['unused']) > 20 else ''}")


# ------------------------------------------------------------------------------------ apply
def apply_transfer(model: nn.Module, t: TransferConfig, load: bool = True, download: bool = True,
                   quiet: bool = False) -> Transfer:
    """Load the source weights (when ``load``: a new run, not a resume) and freeze/unfreeze. Returns
    the record for env.json and the model's :class:`Freezing` (an empty record and None when
    transfer is off)."""
    if not t.enabled:
        return Transfer({}, None)
    # Parameters the model keeps fixed by design (airbench's whitening) are never unfrozen.
    freezing = Freezing(fixed=frozenset(n for n, p in model.named_parameters() if not p.requires_grad))
    head_out = None
    try:
        head_out = output_layer(model)
    except (UserError, AttributeError):
        pass
    out_names = {n for n, m in model.named_modules() if m is head_out}
    skip = {f"{n}.{k}" for n in out_names for k, _ in head_out.named_parameters()} if (t.new_head and head_out) else set()
    record: dict[str, Any] = {}
    if load and t.init_from is not None:
        source, record = load_source(t, download)
        match = match_state(model, source, skip)
        out_mismatch = [m for m in match["mismatch"] if m[0].rsplit(".", 1)[0] in out_names]
        if out_mismatch and not t.new_head:
            shown = "; ".join(f"{n}: source {s}, model {m}" for n, s, m in out_mismatch)
            raise UserError(f"transfer.init_from {t.init_from!r}: the output layer does not fit this run's classes "
                            f"({shown}). Set transfer.new_head = true to start a fresh output layer.")
        if not match["load"]:
            raise UserError(f"transfer.init_from {t.init_from!r}: no parameter of the source matches this model by "
                            f"name and shape; is it the same architecture (model.name)?")
        model.load_state_dict(match["load"], strict=False)
        print_table(match, quiet)
        record.update(loaded=len(match["load"]), shape_mismatch=[m[0] for m in match["mismatch"]],
                      new=match["new"], new_head_tensors=match["new_head"])
    freeze, unfreeze = _freeze_patterns(t), list(t.unfreeze)
    if isinstance(t.freeze, list) or t.freeze not in ("none", "all", "features"):
        check_patterns(model, freeze, "freeze")
    check_patterns(model, unfreeze, "unfreeze")
    for step in t.unfreeze_schedule:
        check_patterns(model, step.modules, "unfreeze_schedule")
    freezing.frozen_names = {n for n in module_names(model) if any(_covered(n, p) for p in freeze)}
    freezing.set_trainable(model, freeze, False)
    freezing.set_trainable(model, unfreeze, True)
    if t.new_head and head_out is not None and t.freeze in ("all", "features"):
        # The new output layer trains unless an explicit pattern freezes it.
        freezing.set_trainable(model, sorted(out_names), True)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if not quiet:
        print(f"transfer: {trainable:,} trainable and {total - trainable:,} frozen parameters; "
              f"{len(freezing.bn_eval)} frozen BatchNorm layers (running statistics) kept in eval mode")
    record.update(trainable_parameters=trainable, frozen_parameters=total - trainable, freeze=t.freeze,
                  unfreeze=unfreeze, new_head=t.new_head)
    return Transfer(record, freezing)


@CALLBACKS.register("unfreeze_schedule")
class UnfreezeSchedule(Callback):
    """At the start of epoch ``step.epoch`` (1-based) make the modules of ``step.modules``
    trainable. The optimizer holds every parameter from the start (frozen ones simply get no
    gradient), so nothing else changes; a resumed run re-applies the steps already due."""

    def __init__(self, model: nn.Module, steps: list[Any], freezing: Freezing, quiet: bool = False):
        self.model, self.steps, self.freezing, self.quiet = model, list(steps), freezing, quiet

    def on_epoch_start(self, trainer: "Trainer") -> None:
        upcoming = trainer.epoch + 1
        for step in self.steps:
            if step.epoch <= upcoming:
                n = self.freezing.set_trainable(self.model, list(step.modules), True)
                if n and not self.quiet:
                    print(f"transfer: epoch {upcoming}: unfroze {', '.join(step.modules)} ({n} tensors)", flush=True)
