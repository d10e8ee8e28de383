"""``cnnlab models``: the model registry with each model's keys, or one model's module names.
Apart from the torch-free listings (``cli.listing``): the registry is filled by the builders'
modules, which import torch."""

from __future__ import annotations

import argparse
import warnings

from ..models import build_model, describe_models


def cmd_models(a: argparse.Namespace) -> None:
    if a.show:
        _show_model(a.show)
        return
    for name, summary, keys in describe_models():
        print(f"{name}: {summary}")
        for key, (typ, default) in keys.items():
            print(f"    {key} = {'unset' if default is None else repr(default)}  ({typ})")


def _show_model(name: str) -> None:
    """Module names of a model built for (3, 32, 32) images and 10 classes: what [transfer]
    freeze / unfreeze patterns match."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model({"name": name}, (3, 32, 32), 10)
    print(f"{name} (built for 3x32x32 images, 10 classes): module names for [transfer] freeze/unfreeze patterns")
    for mname, m in model.named_modules():
        if not mname:
            continue
        n = sum(p.numel() for p in m.parameters())
        print(f"  {mname:<40} {type(m).__name__:<20} {n:>10,} parameters")
