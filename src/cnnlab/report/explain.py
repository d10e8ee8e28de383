"""Figures from inside the model for the run report: what each conv block sees, where the
prediction comes from, and how weights, activations and gradients are distributed.

``model_figures(model, norm, images, labels, preds, class_names, probe)`` draws, for a trained
model and a few chosen test images:

* ``feature_maps``: the output of each conv block (top-level children of ``model.features`` that
  contain a convolution, at most :data:`MAX_BLOCKS`), the :data:`MAX_CHANNELS` most active channels;
* ``saliency``: |d score / d pixel| for the predicted class (Captum ``Saliency``);
* ``gradcam``: Grad-CAM of the predicted class on the last 4-D layer of ``model.features`` whose
  maps are larger than 1x1 (Captum ``LayerGradCam``), upsampled to the image;
* ``weights``: a histogram of the weights of each Conv/Linear layer;
* ``activations``: a histogram of each activation layer's outputs on ``probe`` training images.

``gradient_flow_figures(stats_records)`` draws the training statistics of ``stats.jsonl``
(:mod:`cnnlab.train.stats`): ``gradient_flow`` (per-layer gradient norm and update-to-weight ratio, one
line per recorded epoch) and ``activation_stats`` (per-layer activation mean, std and dead/saturated
share, one line per recorded epoch).

Everything runs on the CPU in float32 with the model in eval mode; the model's per-module
train/eval flags and every parameter's ``requires_grad`` are restored afterwards (transfer runs
keep frozen BatchNorm layers in eval mode inside a training model, and frozen weights stay frozen).
A figure that cannot be drawn for a model is left out with a warning, never an exception: the
report must not fail because one picture did.

The map-computing functions (:func:`saliency_maps`, :func:`gradcam_maps`, :func:`block_outputs`,
:func:`conv_blocks`, :func:`gradcam_layer`) are public so that tests and notebooks can check them.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import matplotlib
import matplotlib.cm
import matplotlib.colors
import matplotlib.figure
import matplotlib.ticker
import numpy as np
import torch
from torch import nn

from ..data import Normalizer
from ..models import ImageClassifier
from ..train.stats import activation_stat
from .plots import HEATMAP_CMAP, OVERLAY_CMAP, PALETTE, figure, style

# Cost caps: they bound the images, blocks, channels, panels and sampled values a model_figures
# call draws, so the inside-the-model figures stay cheap at the end of every run; for a large
# model most of the time is the probe's forward pass (docs/report.md, "Cost").
MAX_IMAGES = 8  # columns of the saliency / Grad-CAM figures
MAX_FEATURE_IMAGES = 4  # columns of the feature-map figure (each cell is a mosaic of channels)
MAX_BLOCKS = 6  # rows of the feature-map figure; evenly spaced blocks, the last always kept
MAX_CHANNELS = 8  # channels shown per block: the most active ones on the shown images
MAX_PANELS = 12  # layers in the weight / activation histogram grids; evenly spaced, first and last kept
MAX_VALUES = 200_000  # sampled values per layer for a histogram: its shape is settled long before this
PROBE_CHUNK = 64  # probe images per forward pass: bounds the memory of hooked activations
HIST_BINS = 60
NAME_CHARS = 28  # layer names are shortened to this many characters (the end is kept: it is the informative part)
CLASS_CHARS = 18  # class names in image titles are shortened to this many characters


@dataclass
class ModelFigure:
    """One figure of the report's inside-the-model section."""

    key: str  # file stem for figures/<key>.png, [a-z0-9_] only, e.g. "feature_maps", "gradcam"
    title: str  # section heading (plain text; the report escapes it)
    figure: matplotlib.figure.Figure
    caption: str = ""  # one or two plain-text sentences: what the figure shows and how to read it


# ------------------------------------------------------------------------------ model handling
@contextmanager
def explain_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and ``requires_grad=False`` on every parameter inside the block (attributions
    need gradients with respect to the input only); each module's own train/eval flag and each
    parameter's ``requires_grad`` are restored afterwards, even on error."""
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in grads:
            p.requires_grad_(False)
        yield model
    finally:
        for m, training in modes:
            m.training = training
        for p, flag in grads:
            p.requires_grad_(flag)


def _cpu_float32(model: nn.Module) -> nn.Module:
    """``model`` itself when it already lives on the CPU in float32, else a CPU float32 copy (so the
    caller's model, e.g. still on the GPU after training, is never moved)."""
    tensors = list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]
    if all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors):
        return model
    return copy.deepcopy(model).to(device="cpu", dtype=torch.float32)


def _normalize(norm: Normalizer, images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> the float32 CPU tensor the model sees (normalized on the Normalizer's device)."""
    return norm(images.to(norm.scale.device)).to("cpu", torch.float32)


def _has_conv(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in module.modules())


@dataclass
class _Call:
    """One module call seen in a traced forward pass (hooks fire when a module finishes)."""

    name: str  # relative to model.features ("" never appears: the root is not hooked)
    module: nn.Module
    shape: tuple[int, ...]  # output shape, batch first
    passthrough: bool  # output is one of its inputs (Identity, in-place ReLU): not a layer of its own


def _trace(features: nn.Module, x: torch.Tensor, keep: frozenset[str] | set[str] = frozenset()) -> tuple[list[_Call], dict[str, torch.Tensor]]:
    """Run ``features`` on ``x`` without gradients, recording every submodule's output shape in
    completion order; the outputs of the modules named in ``keep`` are kept (cloned: a later
    in-place op would change them)."""
    calls: list[_Call] = []
    kept: dict[str, torch.Tensor] = {}

    def hook_for(name: str) -> Callable:
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor):
                calls.append(_Call(name, module, tuple(output.shape), any(output is i for i in inputs)))
                if name in keep:
                    kept[name] = output.detach().float().clone()
        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in features.named_modules() if n]
    try:
        with torch.no_grad():
            features(x)
    finally:
        for h in handles:
            h.remove()
    return calls, kept


def _evenly(items: list, k: int) -> list:
    """At most ``k`` items, evenly spaced, first and last kept."""
    if len(items) <= k:
        return list(items)
    idx = sorted({round(i * (len(items) - 1) / (k - 1)) for i in range(k)}) if k > 1 else [len(items) - 1]
    return [items[i] for i in idx]


def _evenly_layers(layers: list) -> tuple[list, str]:
    """At most MAX_PANELS of ``layers``, evenly spaced, and the caption's note when some are left out."""
    shown = _evenly(layers, MAX_PANELS)
    more = f" ({len(shown)} of {len(layers)} layers, evenly spaced)" if len(shown) < len(layers) else ""
    return shown, more


def conv_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The conv blocks of ``model.features`` as ``(name relative to model.features, module)``,
    input to output, before filtering by output shape.

    Generic rule: descend through wrappers whose only conv-holding child is one module (cnnlab's
    Backbone / timm wrappers; an ``nn.Sequential`` is a list of blocks, never a wrapper); a timm
    model's ``feature_info`` names its blocks; otherwise the top-level children that hold a
    convolution are the blocks (cnn: its conv blocks, resnet18: conv1 and layer1..4, airbench:
    whiten and group1..3). A single such child that is itself a list of conv-holding modules
    (torchvision's ``features``) is expanded into them."""
    root, prefix = model.features, ""
    while not isinstance(root, (nn.Sequential, nn.ModuleList)):
        kids = [(n, c) for n, c in root.named_children() if _has_conv(c)]
        if len(kids) != 1 or getattr(root, "feature_info", None):
            break
        prefix, root = prefix + kids[0][0] + ".", kids[0][1]
    info = getattr(root, "feature_info", None)
    if isinstance(info, list) and info and all(isinstance(d, dict) and "module" in d for d in info):
        try:
            return [(prefix + d["module"], root.get_submodule(d["module"])) for d in info]
        except AttributeError:
            pass  # a feature_info that does not name submodules: fall back to the generic rule
    blocks = [(prefix + n, c) for n, c in root.named_children() if _has_conv(c)]
    if len(blocks) == 1 and isinstance(blocks[0][1], (nn.Sequential, nn.ModuleList)):
        inner = [(f"{blocks[0][0]}.{n}", c) for n, c in blocks[0][1].named_children() if _has_conv(c)]
        if len(inner) >= 2:
            blocks = inner
    return blocks


def gradcam_layer(model: nn.Module, input_shape: tuple[int, int, int]) -> tuple[str, nn.Module] | None:
    """The Grad-CAM layer: the last module of ``model.features`` (in forward order) that holds a
    convolution and whose output is 4-D (N, C, h, w) with h * w > 1 (a 1x1 map gives a constant
    heat map), called once per forward pass and not a pass-through (Identity, in-place ops).
    Holding a convolution rules out channels-last token layers (ConvNeXt's MLP sees (N, h, w, C)).
    None for models without one (MLP)."""
    with explain_mode(model):
        calls, _ = _trace(model.features, torch.zeros(1, *input_shape))
    counts = Counter(c.name for c in calls)
    for c in reversed(calls):
        if (len(c.shape) == 4 and c.shape[2] * c.shape[3] > 1 and not c.passthrough and counts[c.name] == 1
                and _has_conv(c.module)):
            return c.name, c.module
    return None


def block_outputs(model: nn.Module, x: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """Outputs (N, C, h, w) float32 of the conv blocks (:func:`conv_blocks`, at most
    :data:`MAX_BLOCKS`, evenly spaced) for the normalized images ``x`` (N, C, H, W); blocks whose
    output is not 4-D are skipped. Empty for models without conv blocks."""
    blocks = conv_blocks(model)
    if not blocks:
        return []
    with explain_mode(model):
        _, kept = _trace(model.features, x, keep={n for n, _ in blocks})
    out = [(n, kept[n]) for n, _ in blocks if n in kept and kept[n].dim() == 4]
    return _evenly(out, MAX_BLOCKS)


def _targets(target: torch.Tensor | np.ndarray | list[int], n: int) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(target), dtype=torch.long).reshape(-1)
    if len(t) != n:
        raise ValueError(f"{len(t)} targets for {n} images")
    return t


def saliency_maps(model: nn.Module, x: torch.Tensor, target) -> torch.Tensor:
    """Saliency (Simonyan et al. 2014): |d output[target] / d x|, the largest over colour
    channels, for the normalized images ``x`` (N, C, H, W) float32 on the model's device and the
    class indices ``target`` (N,). Returns (N, H, W) float32 >= 0."""
    from captum.attr import Saliency

    t = _targets(target, len(x))
    with explain_mode(model), torch.enable_grad():
        inp = x.detach().clone().requires_grad_(True)  # gradients with respect to the input only
        attr = Saliency(model).attribute(inp, target=t.to(x.device), abs=True)  # (N, C, H, W)
    return attr.detach().amax(dim=1).float()


def gradcam_maps(model: nn.Module, x: torch.Tensor, target, layer: nn.Module | None = None) -> torch.Tensor | None:
    """Grad-CAM (Selvaraju et al. 2017) of the classes ``target`` (N,) on ``layer`` (default
    :func:`gradcam_layer`): ReLU of the channel-weighted (weights = spatially averaged gradients)
    sum of the layer's maps, bilinearly upsampled to the image. ``x``: normalized (N, C, H, W).
    Returns (N, H, W) float32 >= 0, or None when the model has no 4-D layer to explain."""
    from captum.attr import LayerAttribution, LayerGradCam

    if layer is None:
        found = gradcam_layer(model, tuple(x.shape[1:]))
        if found is None:
            return None
        layer = found[1]
    t = _targets(target, len(x))
    with explain_mode(model), torch.enable_grad():
        inp = x.detach().clone().requires_grad_(True)  # makes the layer's output require grad with frozen weights
        cam = LayerGradCam(model, layer).attribute(inp, target=t.to(x.device), relu_attributions=True)  # (N, 1, h, w)
        up = LayerAttribution.interpolate(cam.detach().float(), tuple(x.shape[-2:]), interpolate_mode="bilinear")
    return up[:, 0].clamp(min=0)  # bilinear keeps values >= 0 already; clamp guards rounding


def _probabilities(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(N, K) class probabilities: the model's output when it ends in softmax, else softmax(logits)."""
    with explain_mode(model), torch.no_grad():
        out = model(x).float()
    return out if isinstance(model, ImageClassifier) and model.softmax_output else out.softmax(dim=1)


# ------------------------------------------------------------------------------ drawing helpers
def _short(text: str, n: int) -> str:
    """``text`` cut to ``n`` characters, keeping its end (layer names: ``…layer4.1.conv2``)."""
    text = str(text)
    return text if len(text) <= n else "…" + text[-(n - 1):]


def _short_class(text: str, n: int = CLASS_CHARS) -> str:
    """A class name cut to ``n`` characters, keeping its start."""
    text = str(text)
    return text if len(text) <= n else text[: n - 1] + "…"


def _display(images: torch.Tensor) -> np.ndarray:
    """uint8 (N, C, H, W) -> float (N, H, W) grey or (N, H, W, 3) RGB in [0, 1] for imshow;
    other channel counts are shown as their mean (grey)."""
    x = images.detach().to("cpu", torch.float32) / 255.0
    if x.shape[1] == 3:
        return x.permute(0, 2, 3, 1).numpy()
    return x.mean(dim=1).numpy()


def _show(ax, img: np.ndarray) -> None:
    """An image without axes decoration; grey images get the grey colormap on [0, 1]."""
    if img.ndim == 2:
        ax.imshow(img, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(np.clip(img, 0, 1), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def _unit(m: np.ndarray) -> np.ndarray:
    """A map scaled to [0, 1] by its own maximum (all-zero maps stay zero)."""
    top = float(m.max()) if m.size else 0.0
    return m / top if top > 0 else m


def _image_title(true: str, pred: str, conf: float) -> str:
    return f"true: {_short_class(true)}\npred: {_short_class(pred)} ({conf:.0%})"


def _class_name(class_names: list[str], i: int) -> str:
    return class_names[i] if 0 <= i < len(class_names) else str(i)


def _sample(values: torch.Tensor, k: int, gen: torch.Generator) -> np.ndarray:
    """At most ``k`` values of the flattened tensor, drawn uniformly with replacement (cheap for
    a multi-million-element layer; a histogram cannot tell the difference)."""
    flat = values.detach().reshape(-1).float()
    if flat.numel() > k:
        flat = flat[torch.randint(flat.numel(), (k,), generator=gen)]
    return flat.cpu().numpy()


def _histogram_grid(panels: list[tuple[str, np.ndarray]], xlabel: str, log_counts: bool) -> matplotlib.figure.Figure:
    """Small multiples: one histogram (share of values per bin) per ``(title, values)`` panel."""
    n = len(panels)
    ncols = min(4, n)
    nrows = math.ceil(n / ncols)
    fig = figure(2.3 * ncols + 0.3, 1.9 * nrows + 0.3)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, (title, values) in zip(axes, panels):
        values = values[np.isfinite(values)]
        if values.size == 0:
            ax.set_title(title, fontsize=7)
            ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes, fontsize=7)
            continue
        lo, hi = float(values.min()), float(values.max())
        if hi <= lo:  # a constant layer: one bin around its value
            lo, hi = lo - 0.5, hi + 0.5
        counts, edges = np.histogram(values, bins=HIST_BINS, range=(lo, hi))
        ax.stairs(counts / values.size, edges, fill=True, color=PALETTE[0], alpha=0.85)
        if log_counts:
            ax.set_yscale("log")
            # Few major and no minor ticks: matplotlib's default log ticks over 5+ decades are slow
            # to lay out, and a histogram needs only the order of magnitude.
            ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(numticks=4))
            ax.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            ax.yaxis.set_major_formatter(matplotlib.ticker.LogFormatter())  # "0.01", not mathtext 10^-2 (slow)
        ax.set_title(title, fontsize=7)
        ax.tick_params(labelsize=6)
        ax.grid(False)  # a filled histogram reads without grid lines, and each one costs render time
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=4))  # few labels: each costs layout time
        if not log_counts:
            ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=3))
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.supxlabel(xlabel, fontsize=8)
    fig.supylabel("share of values", fontsize=8)
    return fig


# ------------------------------------------------------------------------------- model figures
def _feature_maps_figure(names_maps: list[tuple[str, torch.Tensor]], shown: np.ndarray, titles: list[str]) -> ModelFigure:
    """Rows: the input, then each block; columns: images. A block's cell is a mosaic (2 x 4) of its
    MAX_CHANNELS channels with the largest mean activation over the shown images, each channel
    min-max scaled over those images (so columns compare)."""
    n_img = len(shown)
    rows = 1 + len(names_maps)
    fig = figure(max(4.0, 1.7 * n_img + 1.0), 1.25 * rows + 0.5)
    axes = fig.subplots(rows, n_img, squeeze=False)
    for j in range(n_img):
        _show(axes[0, j], shown[j])
        axes[0, j].set_title(titles[j], fontsize=7)
    axes[0, 0].set_ylabel("input", fontsize=7)
    cmap = matplotlib.colormaps[HEATMAP_CMAP].with_extremes(bad="white")  # NaN = the gaps between channels of a mosaic
    for r, (name, maps) in enumerate(names_maps, start=1):
        c = maps.shape[1]
        top = maps.mean(dim=(0, 2, 3)).topk(min(MAX_CHANNELS, c)).indices.sort().values  # (k,) channel indices
        sel = maps[:, top]  # (N, k, h, w)
        lo = sel.amin(dim=(0, 2, 3), keepdim=True)
        hi = sel.amax(dim=(0, 2, 3), keepdim=True)
        sel = ((sel - lo) / (hi - lo).clamp(min=1e-12)).numpy()
        k, h, w = sel.shape[1:]
        gcols = min(4, k)
        grows = math.ceil(k / gcols)
        for j in range(n_img):
            mosaic = np.full((grows * (h + 1) - 1, gcols * (w + 1) - 1), np.nan)
            for i in range(k):
                rr, cc = divmod(i, gcols)
                mosaic[rr * (h + 1): rr * (h + 1) + h, cc * (w + 1): cc * (w + 1) + w] = sel[j, i]
            ax = axes[r, j]
            ax.imshow(mosaic, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
        axes[r, 0].set_ylabel(f"{_short(name, 16)}\n{c}×{h}×{w}", fontsize=7)
    return ModelFigure(
        "feature_maps", "Feature maps of each conv block",
        fig,
        f"Each row is one conv block's output (channels × height × width), each column one test image; "
        f"a cell shows the block's {MAX_CHANNELS} most active channels (at most), each scaled to its own range "
        "over these images (bright = strong response). Early blocks respond to edges and strokes, later ones to "
        "coarser, more class-specific patterns.",
    )


def _attribution_figure(key: str, title: str, caption: str, shown: np.ndarray, maps: np.ndarray,
                        titles: list[str], wrong: list[bool], overlay: bool) -> ModelFigure:
    """Two rows per image column: the image, then its map (over the image when ``overlay``)."""
    n = len(shown)
    fig = figure(max(4.0, 1.45 * n + 0.4), 3.6)
    axes = fig.subplots(2, n, squeeze=False)
    for j in range(n):
        _show(axes[0, j], shown[j])
        axes[0, j].set_title(titles[j], fontsize=7, color=PALETTE[3] if wrong[j] else "black")
        ax = axes[1, j]
        m = _unit(maps[j])
        if overlay:
            grey = shown[j] if shown[j].ndim == 2 else shown[j].mean(axis=-1)
            ax.imshow(grey, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.imshow(m, cmap=OVERLAY_CMAP, vmin=0, vmax=1, alpha=0.55, interpolation="bilinear")
        else:
            ax.imshow(m, cmap=OVERLAY_CMAP, vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
    axes[1, 0].set_ylabel(title.split(" ")[0], fontsize=7)
    return ModelFigure(key, title, fig, caption)


def _weights_figure(model: nn.Module, gen: torch.Generator, trainable: set[int]) -> ModelFigure | None:
    """``trainable``: ids of the parameters that required grad before explain_mode froze them all."""
    layers = [(n, m) for n, m in model.named_modules()
              if isinstance(getattr(m, "weight", None), nn.Parameter) and m.weight.dim() >= 2]
    if not layers:
        return None
    shown, more = _evenly_layers(layers)
    panels = []
    for name, m in shown:
        w = m.weight.detach()
        frozen = "" if id(m.weight) in trainable else ", frozen"
        panels.append((f"{_short(name, NAME_CHARS)}\n{'×'.join(map(str, w.shape))}, std {w.float().std().item():.3g}{frozen}",
                       _sample(w, MAX_VALUES, gen)))
    fig = _histogram_grid(panels, "weight", log_counts=False)
    return ModelFigure(
        "weights", "Weight distributions per layer", fig,
        f"Histogram of each Conv/Linear layer's weights{more}, input to output; the title gives the weight shape and "
        "standard deviation. Very wide or collapsed (near-zero) distributions point to bad initialisation or "
        "too much / too little weight decay.",
    )


def _activations_figure(model: nn.Module, x_probe: torch.Tensor, gen: torch.Generator) -> ModelFigure | None:
    """Hooks on the activation modules (those :mod:`cnnlab.train.stats` records; a module called several
    times per forward pass gets one panel per call, ``name#2``...), or on the conv blocks when the
    model has none of them; values sampled per chunk of probe images so each layer keeps at most
    MAX_VALUES."""
    sites = [(n or type(m).__name__, m) for n, m in model.named_modules() if activation_stat(m) is not None]
    what = "activation layer"
    if not sites:  # activations the stats module does not know (timm's own GELU class): the conv blocks' outputs
        sites, what = [(f"features.{n}", m) for n, m in conv_blocks(model)], "conv block"
    if not sites:
        return None
    chunks = [x_probe[i:i + PROBE_CHUNK] for i in range(0, len(x_probe), PROBE_CHUNK)]
    per_chunk = max(1, MAX_VALUES // max(1, len(chunks)))
    values: dict[str, list[np.ndarray]] = {}
    calls: Counter = Counter()

    def hook_for(name: str) -> Callable:
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor):
                calls[name] += 1
                key = name if calls[name] == 1 else f"{name}#{calls[name]}"
                values.setdefault(key, []).append(_sample(output, per_chunk, gen))
        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in sites]
    try:
        with explain_mode(model), torch.no_grad():
            for xc in chunks:
                calls.clear()
                model(xc)
    finally:
        for h in handles:
            h.remove()
    if not values:
        return None
    layers = [(k, np.concatenate(v)) for k, v in values.items()]  # insertion order = forward order
    shown, more = _evenly_layers(layers)
    panels = [(f"{_short(k, NAME_CHARS)}\nmean {v.mean():.3g}, std {v.std():.3g}, zero {np.mean(v == 0):.0%}", v)
              for k, v in shown]
    fig = _histogram_grid(panels, "activation", log_counts=True)
    return ModelFigure(
        "activations", "Activation distributions per layer", fig,
        f"Histogram (log scale) of each {what}'s outputs on {len(x_probe)} training images{more}. "
        "A ReLU layer that is almost all zeros has dead units; sigmoid/tanh mass piled at the ends of the range "
        "means saturated units that pass almost no gradient.",
    )


def _attempt(key: str, fn: Callable[[], ModelFigure | None], out: list[ModelFigure]) -> None:
    """Run one figure builder; on failure warn and leave the figure out."""
    try:
        fig = fn()
    except Exception as e:  # noqa: BLE001 - one unexplainable figure must not sink the report
        warnings.warn(f"explain: figure {key!r} left out: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                      UserWarning, stacklevel=3)
        return
    if fig is not None:
        out.append(fig)


def model_figures(model: torch.nn.Module, norm: Normalizer,
                  images: torch.Tensor,  # (N, C, H, W) uint8 CPU: chosen test images (right and wrong ones)
                  labels: np.ndarray,  # (N,) true class index
                  preds: np.ndarray,  # (N,) predicted class index
                  class_names: list[str],
                  probe: torch.Tensor,  # (M, C, H, W) uint8 CPU: training images for activation distributions
                  ) -> list[ModelFigure]:
    """Feature maps of each conv block, saliency and Grad-CAM overlays (Captum), weight distributions per layer,
    activation distributions per layer. Figures that do not apply are left out (an MLP has no feature maps or
    Grad-CAM: saliency only). Never raises for a model it cannot explain: it leaves that figure out and warns.

    Keys, in this order when present: ``feature_maps``, ``saliency``, ``gradcam``, ``weights``,
    ``activations``. At most :data:`MAX_IMAGES` images are explained (:data:`MAX_FEATURE_IMAGES` in the
    feature maps); maps are computed for the predicted class. The model runs on the CPU in float32
    (a copy when it lives elsewhere) and its modes and ``requires_grad`` flags are restored."""
    out: list[ModelFigure] = []
    gen = torch.Generator().manual_seed(0)  # the same sampled values every time: figures repeat exactly
    try:
        net = _cpu_float32(model)
    except Exception as e:  # noqa: BLE001
        warnings.warn(f"explain: could not copy the model to the CPU ({type(e).__name__}: {e}); no model figures.",
                      UserWarning, stacklevel=2)
        return out
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)[:MAX_IMAGES]
    preds = np.asarray(preds, dtype=np.int64).reshape(-1)[:MAX_IMAGES]
    images = images[:MAX_IMAGES]
    n = min(len(images), len(labels), len(preds))
    trainable = {id(p) for p in net.parameters() if p.requires_grad}  # before explain_mode freezes them
    with style(), explain_mode(net):
        if n > 0:
            images, labels, preds = images[:n], labels[:n], preds[:n]
            x = _normalize(norm, images)  # (n, C, H, W) float32, what the model sees
            shown = _display(images)
            state: dict[str, Any] = {}

            def titles() -> list[str]:
                if "titles" not in state:
                    prob = _probabilities(net, x)
                    conf = prob[torch.arange(n), torch.as_tensor(preds)].tolist()
                    state["titles"] = [_image_title(_class_name(class_names, int(t)), _class_name(class_names, int(p)), c)
                                       for t, p, c in zip(labels, preds, conf)]
                return state["titles"]

            wrong = [bool(t != p) for t, p in zip(labels, preds)]

            def feature_maps() -> ModelFigure | None:
                k = min(n, MAX_FEATURE_IMAGES)
                maps = block_outputs(net, x[:k])
                return _feature_maps_figure(maps, shown[:k], titles()[:k]) if maps else None

            def saliency() -> ModelFigure:
                maps = saliency_maps(net, x, preds).numpy()
                return _attribution_figure(
                    "saliency", "Saliency of the predicted class", "Top: test images (orange title: misclassified) with "
                    "their true and predicted class and the predicted class's probability. Bottom: saliency, the size of "
                    "the gradient of the predicted class's score with respect to each pixel (bright = changing this "
                    "pixel changes the score most), each map scaled to its own maximum.",
                    shown, maps, titles(), wrong, overlay=False)

            def gradcam() -> ModelFigure | None:
                found = gradcam_layer(net, tuple(x.shape[1:]))
                if found is None:
                    return None
                maps = gradcam_maps(net, x, preds, layer=found[1])
                return _attribution_figure(
                    "gradcam", "Grad-CAM of the predicted class",
                    f"Grad-CAM on layer {_short(found[0], 40)} ({found[1].__class__.__name__}), upsampled to the image "
                    "and laid over it: bright regions are where that layer's features raised the predicted class's "
                    "score. Each map is scaled to its own maximum; an all-dark map means no region supported it.",
                    shown, maps.numpy(), titles(), wrong, overlay=True)

            _attempt("feature_maps", feature_maps, out)
            _attempt("saliency", saliency, out)
            _attempt("gradcam", gradcam, out)
        _attempt("weights", lambda: _weights_figure(net, gen, trainable), out)
        if len(probe):
            _attempt("activations", lambda: _activations_figure(net, _normalize(norm, probe), gen), out)
    return out


# -------------------------------------------------------------------------- training statistics
def _layer_order(lists: list[list[str]]) -> list[str]:
    """Merge per-record layer name lists into one order that keeps each list's relative order
    (layers unfrozen later in a transfer run appear only in later records)."""
    order: list[str] = []
    for names in lists:
        prev = -1
        for name in names:
            if name in order:
                prev = order.index(name)
            else:
                order.insert(prev + 1, name)
                prev += 1
    return order


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and v is not None and math.isfinite(v) else float("nan")


def _per_epoch_lines(axes_specs: list[tuple[str, bool, np.ndarray]], layers: list[str], epochs: list[int],
                     title: str, key: str, caption: str) -> ModelFigure:
    """Panels sharing the x axis (layers, input to output); one line per recorded epoch colored
    from dark (first) to bright (last) with a colorbar. ``axes_specs``: (ylabel, log, values (E, L))."""
    n_layers = len(layers)
    width = min(12.0, max(6.4, 0.22 * n_layers + 2.0))
    fig = figure(width, 1.9 * len(axes_specs) + 1.2)
    axes = fig.subplots(len(axes_specs), 1, sharex=True, squeeze=False)[:, 0]
    cmap = matplotlib.colormaps[HEATMAP_CMAP]
    lo, hi = min(epochs), max(epochs)
    colors = [cmap(0.0 if hi == lo else (e - lo) / (hi - lo)) for e in epochs]
    xs = np.arange(n_layers)
    for ax, (ylabel, log, vals) in zip(axes, axes_specs):
        for i, e in enumerate(epochs):
            v = vals[i].copy()
            if log:
                v[v <= 0] = np.nan  # log scale: zeros and negatives cannot be drawn
            ax.plot(xs, v, color=colors[i], lw=1.2, marker="o", ms=2.5)
        if log:
            ax.set_yscale("log")
        ax.set_ylabel(ylabel)
    step = max(1, math.ceil(n_layers / 40))  # at most ~40 labels: beyond that they overlap
    axes[-1].set_xticks(xs[::step], [_short(n, NAME_CHARS) for n in layers[::step]], rotation=90, fontsize=7)
    axes[-1].set_xlabel("layer (input → output)")
    axes[0].set_title(title)
    norm = matplotlib.colors.Normalize(lo, hi if hi > lo else lo + 1)
    sm = matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap)
    cbar = fig.colorbar(sm, ax=list(axes), label="epoch", fraction=0.03, pad=0.01)
    cbar.locator = matplotlib.ticker.MaxNLocator(integer=True)  # epochs are whole numbers
    cbar.update_ticks()
    return ModelFigure(key, title, fig, caption)


def gradient_flow_figures(stats_records: list[dict]) -> list[ModelFigure]:
    """From stats.jsonl records (cnnlab.train.stats; read its docstring and a real stats.jsonl from a run): per-layer
    gradient norms over training (gradient flow: layers on one axis, epochs as lines or a heatmap, log scale),
    and the activation statistics recorded during training (mean/std, dead-unit share per layer over epochs).
    Empty list when there are no records.

    Keys: ``gradient_flow`` (gradient norm and update-to-weight ratio per Conv/Linear layer, one line
    per recorded epoch) and ``activation_stats`` (mean, std, dead share for ReLU-family layers,
    saturated share for sigmoid/tanh layers). A figure without any finite value is left out."""
    records = [r for r in stats_records if isinstance(r, dict) and "epoch" in r]
    if not records:
        return []
    records = sorted(records, key=lambda r: r["epoch"])
    epochs = [int(r["epoch"]) for r in records]
    out: list[ModelFigure] = []
    with style():
        layers = _layer_order([[d["name"] for d in r.get("layers", [])] for r in records])
        if layers:
            idx = {n: i for i, n in enumerate(layers)}
            grad = np.full((len(records), len(layers)), np.nan)
            upd = np.full_like(grad, np.nan)
            for i, r in enumerate(records):
                for d in r.get("layers", []):
                    grad[i, idx[d["name"]]] = _num(d.get("grad_norm"))
                    upd[i, idx[d["name"]]] = _num(d.get("update_ratio"))
            specs = [("gradient norm", True, grad)]
            if np.isfinite(upd).any():
                specs.append(("update / weight", True, upd))
            if any(np.isfinite(v).any() for _, _, v in specs):
                _attempt("gradient_flow", lambda: _per_epoch_lines(
                    specs, layers, epochs, "Gradient flow per layer", "gradient_flow",
                    "Top: L2 norm of each Conv/Linear weight's gradient at the last step of each recorded epoch (log "
                    "scale, one line per epoch, dark = early, bright = late). Gradients that shrink by orders of "
                    "magnitude towards the input (left) mean vanishing gradients, huge ones exploding gradients. "
                    "Bottom: how much each weight changed over the epoch relative to its size (around 1e-3 per step "
                    "is healthy)."), out)
        acts = _layer_order([[d["name"] for d in r.get("activations", [])] for r in records])
        if acts:
            idx = {n: i for i, n in enumerate(acts)}
            cols = {k: np.full((len(records), len(acts)), np.nan) for k in ("mean", "std", "dead", "saturated")}
            for i, r in enumerate(records):
                for d in r.get("activations", []):
                    for k in cols:
                        cols[k][i, idx[d["name"]]] = _num(d.get(k))
            specs = [("mean", False, cols["mean"]), ("std", False, cols["std"])]
            if np.isfinite(cols["dead"]).any():
                specs.append(("dead unit share", False, cols["dead"]))
            if np.isfinite(cols["saturated"]).any():
                specs.append(("saturated share", False, cols["saturated"]))
            if any(np.isfinite(v).any() for _, _, v in specs):
                probe = records[-1].get("probe_size")
                _attempt("activation_stats", lambda: _per_epoch_lines(
                    specs, acts, epochs, "Activation statistics per layer during training", "activation_stats",
                    f"Mean and standard deviation of each activation layer's output on a fixed probe batch"
                    f"{f' of {probe} training images' if probe else ''}, one line per recorded epoch (dark = early, "
                    "bright = late); dead unit share: units (channels) never positive on the probe batch; saturated "
                    "share: sigmoid/tanh outputs within 1 % of their range's ends."), out)
    return out
