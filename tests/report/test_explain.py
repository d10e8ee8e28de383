"""Inside-the-model figures (cnnlab.report.explain): which figures each model family gets, that the
attribution maps are image-sized and non-trivial (and exactly right for a linear model), that the
model is left as it was found, and the gradient-flow figures of a real run's stats.jsonl."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import cnnlab
from cnnlab.report import explain, plots
from cnnlab.data.augment import Normalizer
from cnnlab.models import ImageClassifier, build_model
from cnnlab.train.stats import read_stats

PNG = b"\x89PNG\r\n\x1a\n"
IMAGE_KEYS = {"feature_maps", "saliency", "gradcam", "weights", "activations"}


def _digits(n: int) -> tuple[torch.Tensor, np.ndarray]:
    """The first ``n`` scikit-learn digits as uint8 (n, 1, 8, 8) (0..16 scaled to 0..255) and labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy((d.images[:n] * (255 / 16)).round().astype(np.uint8))[:, None]
    return x, d.target[:n].astype(np.int64)


def _rgb(n: int, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def _norm(c: int) -> Normalizer:
    return Normalizer([0.3] * c, [0.3] * c, torch.device("cpu"))


def _predict(model: nn.Module, norm: Normalizer, x: torch.Tensor) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return model(norm(x)).argmax(1).numpy()


# (model config, input shape, figure keys); 32x32 models get a small probe so each case takes seconds.
FAMILIES = [
    ({"name": "cnn", "channels": [8, 16]}, (1, 8, 8), IMAGE_KEYS),
    ({"name": "mlp", "hidden_size": 32}, (1, 8, 8), {"saliency", "weights", "activations"}),
    ({"name": "resnet18"}, (3, 32, 32), IMAGE_KEYS),
    ({"name": "timm:test_resnet"}, (3, 32, 32), IMAGE_KEYS),
    ({"name": "airbench", "widths": [8, 16, 16]}, (3, 32, 32), IMAGE_KEYS),
]


@pytest.mark.parametrize("cfg,shape,keys", FAMILIES, ids=[f[0]["name"] for f in FAMILIES])
def test_model_figures_per_family(cfg, shape, keys, tmp_path):
    if cfg["name"].startswith("timm:"):
        pytest.importorskip("timm")
    torch.manual_seed(0)
    model = build_model(cfg, shape, 10)
    norm = _norm(shape[0])
    if shape == (1, 8, 8):
        images, labels = _digits(4)
        probe = _digits(64)[0]
    else:
        images, labels, probe = _rgb(3), np.array([0, 1, 2]), _rgb(8)
    if hasattr(model, "init_from_data"):
        model.init_from_data(probe, norm)
    preds = _predict(model, norm, images)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a figure silently left out would hide a broken figure
        figs = explain.model_figures(model, norm, images, labels, preds, [f"digit {i}" for i in range(10)], probe)
    assert [f.key for f in figs] == [k for k in ["feature_maps", "saliency", "gradcam", "weights", "activations"] if k in keys]
    by_key = {f.key: f for f in figs}
    for f in figs:
        assert re.fullmatch(r"[a-z0-9_]+", f.key) and f.title and f.caption
        # The histogram grids lay out the same for every family (and take most of the render
        # time): rendered for the digits models here, the image figures for every family.
        if shape == (1, 8, 8) or f.key not in ("weights", "activations"):
            assert plots.save_png(f.figure, tmp_path / f"{f.key}.png").startswith(PNG)
    if cfg["name"] == "resnet18":  # 21 conv/linear layers: capped, evenly spaced, first and last kept
        panels = [ax.get_title() for ax in by_key["weights"].figure.axes if ax.get_visible()]
        assert len(panels) == explain.MAX_PANELS
        assert panels[0].startswith("features.conv1") and panels[-1].startswith("head.out")
    if "saliency" in by_key:  # one column per image: its title names true and predicted class
        titles = [ax.get_title() for ax in by_key["saliency"].figure.axes[: 2 * len(images)] if ax.get_title()]
        assert titles[0].startswith(f"true: digit {labels[0]}\npred: digit {preds[0]} (")


def test_conv_blocks_and_gradcam_layer_per_family():
    torch.manual_seed(0)
    cnn = build_model({"name": "cnn", "channels": [8, 16, 32]}, (1, 8, 8), 10)
    assert [n for n, _ in explain.conv_blocks(cnn)] == ["0", "1", "2"]
    # block 2 shrinks 2x2 to 1x1 by pooling: the last map larger than 1x1 is its conv's output
    assert explain.gradcam_layer(cnn, (1, 8, 8))[0] == "2.conv"
    resnet = build_model({"name": "resnet18"}, (3, 32, 32), 10)
    assert [n for n, _ in explain.conv_blocks(resnet)] == ["conv1", "layer1", "layer2", "layer3", "layer4"]
    assert explain.gradcam_layer(resnet, (3, 32, 32))[0] == "layer4"  # 4x4; avgpool's 1x1 is skipped
    mlp = build_model({"name": "mlp"}, (1, 8, 8), 10)
    assert explain.conv_blocks(mlp) == [] and explain.gradcam_layer(mlp, (1, 8, 8)) is None
    maps = explain.block_outputs(resnet, torch.zeros(2, 3, 32, 32))
    assert [(n, tuple(t.shape)) for n, t in maps] == [
        ("conv1", (2, 64, 32, 32)), ("layer1", (2, 64, 32, 32)), ("layer2", (2, 128, 16, 16)),
        ("layer3", (2, 256, 8, 8)), ("layer4", (2, 512, 4, 4))]


def test_saliency_of_a_linear_model_is_its_weight_row():
    # logits = W x + b, so d logit_t / d x = W[t] exactly: saliency must be |W[t]| per pixel.
    torch.manual_seed(0)
    model = build_model({"name": "mlp", "hidden_layers": 0}, (1, 8, 8), 10)
    x = torch.randn(3, 1, 8, 8)
    target = np.array([4, 0, 9])
    sal = explain.saliency_maps(model, x, target)
    w = model.head.out.weight.detach()  # (10, 64)
    assert sal.shape == (3, 8, 8)
    torch.testing.assert_close(sal, w[torch.as_tensor(target)].abs().view(3, 8, 8))


@pytest.mark.parametrize("channels_last", [False, True])
def test_maps_are_image_sized_and_not_zero(channels_last):
    torch.manual_seed(0)
    model = build_model({"name": "cnn", "channels": [8, 16]}, (1, 8, 8), 10)
    norm = _norm(1)
    images, _ = _digits(6)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    x = norm(images)
    preds = _predict(model, norm, images)
    sal = explain.saliency_maps(model, x, preds)
    cam = explain.gradcam_maps(model, x, preds)
    for maps in (sal, cam):
        assert maps.shape == (6, 8, 8) and maps.dtype == torch.float32
        assert (maps >= 0).all() and torch.isfinite(maps).all()
    assert (sal.flatten(1).amax(1) > 0).all()  # every image has a gradient somewhere
    assert cam.sum() > 0 and len(torch.unique(cam)) > 2  # not all zero, not constant: a spatial map
    cam32 = explain.gradcam_maps(build_model({"name": "resnet18"}, (3, 32, 32), 10), _norm(3)(_rgb(2)), [1, 2])
    assert cam32.shape == (2, 32, 32) and cam32.sum() > 0
    assert explain.gradcam_maps(build_model({"name": "mlp"}, (1, 8, 8), 10), x, preds) is None


def test_mode_and_requires_grad_restored():
    torch.manual_seed(0)
    model = build_model({"name": "cnn", "channels": [8, 16]}, (1, 8, 8), 10)
    model.train()
    model.features[0].bn.eval()  # a frozen BatchNorm inside a training model (transfer runs)
    for p in model.features[0].parameters():
        p.requires_grad_(False)
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images, labels = _digits(4)
    figs = explain.model_figures(model, _norm(1), images, labels, labels, [str(i) for i in range(10)], _digits(32)[0])
    assert len(figs) == 5
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())  # attributions never touch weight gradients
    for k, v in model.state_dict().items():  # eval mode: BatchNorm running statistics untouched
        torch.testing.assert_close(v, before[k])
    weights = next(f for f in figs if f.key == "weights").figure
    titles = [ax.get_title() for ax in weights.axes if ax.get_visible()]
    assert titles[0].endswith(", frozen") and not titles[-1].endswith(", frozen")


def test_model_elsewhere_is_copied_not_moved():
    torch.manual_seed(0)
    model = build_model({"name": "cnn", "channels": [8]}, (1, 8, 8), 10).double()
    images, labels = _digits(2)
    figs = explain.model_figures(model, _norm(1), images, labels, labels, [str(i) for i in range(10)], images)
    assert {f.key for f in figs} == IMAGE_KEYS
    assert all(p.dtype == torch.float64 for p in model.parameters())


def test_many_classes_long_names_and_no_images(tmp_path):
    torch.manual_seed(0)
    model = build_model({"name": "cnn", "channels": [8, 16]}, (1, 8, 8), 100)
    names = [f"a rather long class name for category number {i}" for i in range(100)]
    images, _ = _digits(4)
    labels, preds = np.arange(4) * 24, np.arange(4)[::-1] * 24
    figs = explain.model_figures(model, _norm(1), images, labels, preds, names, images)
    sal = next(f for f in figs if f.key == "saliency")
    title = sal.figure.axes[0].get_title()
    assert title.startswith("true: a rather long") and max(len(line) for line in title.splitlines()) <= 32
    for f in figs:
        plots.save_png(f.figure, tmp_path / f"{f.key}.png")
    # no chosen images: only the figures that need none
    none = explain.model_figures(model, _norm(1), images[:0], labels[:0], preds[:0], names, images)
    assert [f.key for f in none] == ["weights", "activations"]


class _Broken(nn.Module):
    def forward(self, x):
        raise RuntimeError("cannot run")


def test_unexplainable_model_warns_and_leaves_figures_out():
    model = ImageClassifier(nn.Sequential(nn.Conv2d(1, 4, 3), _Broken()), nn.Linear(4, 10))
    images, labels = _digits(2)
    with pytest.warns(UserWarning, match="left out"):
        figs = explain.model_figures(model, _norm(1), images, labels, labels, [str(i) for i in range(10)], images)
    assert [f.key for f in figs] == ["weights"]  # the only figure that needs no forward pass


def test_gradient_flow_figures_from_a_real_run(tmp_path):
    run = cnnlab.run({"data": {"dataset": "digits"}, "train": {"epochs": 2}, "report": False},
                     runs_dir=tmp_path, quiet=True)
    records = read_stats(run.dir)
    assert [r["epoch"] for r in records] == [1, 2]
    figs = explain.gradient_flow_figures(records)
    assert [f.key for f in figs] == ["gradient_flow", "activation_stats"]
    for f in figs:
        assert f.title and f.caption
        assert plots.save_png(f.figure, tmp_path / f"{f.key}.png").startswith(PNG)
    flow = figs[0].figure
    layer_names = [r["name"] for r in records[0]["layers"]]
    assert [t.get_text() for t in flow.axes[1].get_xticklabels()] == layer_names  # layers, input to output
    lines = flow.axes[0].get_lines()
    assert len(lines) == 2  # one line per recorded epoch
    np.testing.assert_allclose(lines[1].get_ydata(), [r["grad_norm"] for r in records[1]["layers"]])
    acts = figs[1].figure.axes
    assert [ax.get_ylabel() for ax in acts if ax.get_ylabel()][:3] == ["mean", "std", "dead unit share"]
    assert explain.gradient_flow_figures([]) == []


def test_gradient_flow_merges_layers_that_appear_later():
    # transfer runs unfreeze layers: a later record has layers the first one lacked
    rec = lambda epoch, names: {"epoch": epoch, "layers": [{"name": n, "grad_norm": 1.0 + i, "update_ratio": None}
                                                            for i, n in enumerate(names)], "activations": []}
    figs = explain.gradient_flow_figures([rec(1, ["a", "c"]), rec(2, ["a", "b", "c"])])
    assert [f.key for f in figs] == ["gradient_flow"]
    ax = figs[0].figure.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), [1.0, np.nan, 2.0])
