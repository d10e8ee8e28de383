"""A trained run's model at work with fixed weights: load it from a checkpoint (``load_model``),
measure it on any split or data set (``evaluate``, ``cnnlab evaluate``) and classify image files
(``predict``, ``cnnlab predict``). Preprocessing is the run's own: its training split's
normalization statistics and image size.
"""

from __future__ import annotations

import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import rundir as rd
from ._progress import Reporter, reporting
from .config import ExperimentConfig
from .data import Normalizer, load_data, read_image_files
from .errors import RunFailure, UserError
from .experiment import load_config, validate_config, with_overrides
from .metrics import classification_report, compute_metrics, top_k
from .models import ImageClassifier, build_model
from .train import (DeviceSplit, Inference, amp_dtype, build_loss, eval_weights, load_checkpoint, predict as predict_probs,
                    check_threads, prepare_process, resolve_device)


def load_model(run_dir: str | Path, which: str = "best",
               device: torch.device | None = None) -> tuple[ImageClassifier, dict[str, Any], ExperimentConfig]:
    """(model in eval mode, checkpoint dict, config) for a run's checkpoint ``best``/``last``/a path.
    The weights are the ones the run evaluated with (the EMA average when it kept one)."""
    run_dir = rd.require_run_dir(run_dir)
    path = rd.checkpoint_path(run_dir, which)
    state = load_checkpoint(path)
    cfg = validate_config(state["config"], str(path)) if state.get("config") else load_config(run_dir / rd.CONFIG)
    meta = state["meta"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(cfg.model, tuple(meta["input_shape"]), len(meta["class_names"]))
    try:
        model.load_state_dict(eval_weights(state))
    except RuntimeError as e:
        raise UserError(f"checkpoint does not fit the run's model {cfg.model.name!r}: {str(e).splitlines()[0]}") from None
    model.to(device or torch.device("cpu")).eval()
    return model, state, cfg


def evaluate(run_dir: str | Path, checkpoint: str = "best", overrides: list[str] | dict | None = None,
             splits: list[str] | None = None, quiet: bool = False) -> dict[str, Any]:
    """Metrics of a saved checkpoint on the run's splits, or on another data set via ``overrides``
    (``data.*`` keys). Normalization uses the run's own training statistics. Writes
    ``evaluations/<timestamp>.json`` in the run directory and returns the metrics."""
    run_dir = rd.require_run_dir(run_dir)
    base = load_config(run_dir / rd.CONFIG)
    cfg = with_overrides(base, overrides, f"{run_dir / rd.CONFIG} with --set")
    device = resolve_device(cfg.train.device)
    check_threads(cfg.train.threads)
    model, state, _ = load_model(run_dir, checkpoint, device)
    meta = state["meta"]
    with reporting(Reporter(quiet=quiet)):  # a cold image archive is decoded first: say so while it is
        data = load_data(cfg.data, cfg.seed)
    prepare_process(device, cfg.train.threads)  # after the data (see prepare_process)
    if len(data.class_names) != len(meta["class_names"]):
        raise UserError(f"the data set has {len(data.class_names)} classes but the model was trained on "
                        f"{len(meta['class_names'])}; choose a data set or class subset with the same classes.")
    if tuple(data.input_shape) != tuple(meta["input_shape"]):
        raise UserError(f"the data set's images are {tuple(data.input_shape)} but the model takes "
                        f"{tuple(meta['input_shape'])}; set data.image_size to match.")
    norm = Normalizer(meta["mean"], meta["std"], device)
    loss_fn = build_loss(cfg.train, np.ones(len(meta["class_names"]))).to(device)
    amp = amp_dtype(cfg.train.precision, device)
    inf = Inference.of(model, cfg.train)  # channels_last and train.compile as in training
    out: dict[str, Any] = {}
    for name in splits or ["train", "val", "test"]:
        split = getattr(data, name, None)
        if split is None:
            continue
        dev = DeviceSplit.of(split, device)
        probs, loss = predict_probs(inf.model, dev, norm, cfg.train.eval_batch_size, amp, loss_fn,
                                    channels_last=inf.channels_last, tta=cfg.train.tta, forward=inf.forward)
        _check_finite(probs, f"the {name} split")
        out[name] = compute_metrics(split.y.numpy(), probs, meta["class_names"], loss)
    record = {"checkpoint": checkpoint, "epoch": state["epoch"], "overrides": overrides or [], "metrics": out}
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    saved = run_dir / rd.EVALUATIONS / f"{stamp}.json"
    rd.atomic_write_json(saved, record)
    if not quiet:
        for name, m in out.items():
            print(f"\n{name}: accuracy {m['accuracy']:.4f}  loss {m['loss']:.4f}  (n={m['n']})")
            print(classification_report(m))
        print(f"\nsaved: {saved}")  # the run directory gains a file: say which
    return out


def predict(run_dir: str | Path, images: list[str], checkpoint: str = "best", k: int = 3,
            quiet: bool = False) -> list[dict[str, Any]]:
    """Class and top-k probabilities for each image file, preprocessed like the run's data."""
    if k < 1:
        raise UserError(f"top = {k}: give how many classes to show per image, at least 1.")
    run_dir = rd.require_run_dir(run_dir)
    model, state, cfg = load_model(run_dir, checkpoint)
    prepare_process(torch.device("cpu"), cfg.train.threads)
    meta = state["meta"]
    c, h, w = meta["input_shape"]
    x = read_image_files(list(images), c, (h, w))
    norm = Normalizer(meta["mean"], meta["std"], torch.device("cpu"))
    # Eager (no train.compile): a handful of images would not pay for a compilation.
    inf = Inference.of(model, cfg.train.model_copy(update={"compile": False}))
    probs, _ = predict_probs(inf.model, DeviceSplit(x, torch.zeros(len(x), dtype=torch.long)), norm, 256,
                             channels_last=inf.channels_last, tta=cfg.train.tta)
    _check_finite(probs, "these images")
    names = meta["class_names"]
    idx, p = top_k(probs, min(k, len(names)))
    results = []
    for path, row_i, row_p in zip(images, idx, p):
        top = [{"class": names[i], "probability": float(q)} for i, q in zip(row_i, row_p)]
        results.append({"image": str(path), "class": top[0]["class"], "probability": top[0]["probability"], "top": top})
        if not quiet:
            alts = ", ".join(f"{t['class']} {t['probability']:.3f}" for t in top)
            print(f"{path}: {top[0]['class']} ({alts})")
    return results


def _check_finite(probs: np.ndarray, what: str) -> None:
    if not np.isfinite(probs).all():
        raise RunFailure(f"the model's outputs on {what} are not finite: its weights overflow on these inputs (a "
                         f"checkpoint of a run whose learning rate was far too high?), so no metrics are computed.")
