"""Images/s of the batched ``Augmenter`` beside torchvision.transforms.v2 applied image by image.

The setting is a typical CIFAR one: crop 4 + horizontal flip + rotation 15 + colour jitter 0.2
(brightness, contrast, saturation) + erasing 0.25, on a batch of 512 uint8 32x32 RGB images.
The baseline is the same augmentation as a torchvision v2 ``Compose`` called in a Python loop
over the batch's images (then stacked), on the same device: what a training step does when it
augments a device batch with per-image transforms. The two are timed alternately, round after
round, in one process; a row's ratio is the median of the per-round ratios ours / baseline.

    .venv/bin/python benchmarks/augment_speed.py                   # CPU, and CUDA when there is one
    .venv/bin/python benchmarks/augment_speed.py --rounds 9 --devices cpu --threads 1

Also timed, for scale: the batched crop + flip alone (today's ``augment_batch`` path).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision.transforms.v2 as T
from torchvision.transforms import InterpolationMode

from cnnlab.config import AugmentConfig
from cnnlab.data import Augmenter

SETTING = {"crop_padding": 4, "hflip": True, "rotation": 15, "brightness": 0.2, "contrast": 0.2,
           "saturation": 0.2, "erasing": 0.25}
CLASSES = [str(k) for k in range(10)]


def torchvision_pipeline(size: int) -> T.Compose:
    """SETTING as torchvision v2 transforms of one image (bilinear rotation, like the Augmenter)."""
    return T.Compose([
        T.RandomCrop(size, padding=4), T.RandomHorizontalFlip(),
        T.RandomRotation(15, interpolation=InterpolationMode.BILINEAR),
        T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2), T.RandomErasing(p=0.25, value=0),
    ])


def _timed(fn, device: torch.device, repeats: int) -> float:
    """Seconds per call of ``fn`` (mean of ``repeats`` calls, the device's queue drained)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats


def measure(device: torch.device, batch: int, rounds: int) -> list[tuple[str, float, float]]:
    """[(row, images/s median, ratio ours / baseline median)] on ``device``."""
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, device=device, generator=g)
    y = torch.randint(0, len(CLASSES), (batch,), device=device, generator=g)
    ours = Augmenter(AugmentConfig.model_validate(SETTING), CLASSES, x.shape, device)
    today = Augmenter(AugmentConfig(crop_padding=4, hflip=True), CLASSES, x.shape, device)
    per_image = torchvision_pipeline(32)
    torch.manual_seed(0)

    def baseline():
        return torch.stack([per_image(img) for img in x])

    # Batched calls are fast: repeat them so that a measurement lasts about as long as one baseline call.
    for fn in (baseline, lambda: ours(x, y, g), lambda: today(x, y, g)):
        fn()  # warm-up: first-call allocations, kernel selection
    t_base = _timed(baseline, device, 1)
    repeats = max(1, int(t_base / max(_timed(lambda: ours(x, y, g), device, 3), 1e-6)))
    times: dict[str, list[float]] = {"base": [], "ours": [], "today": []}
    for _ in range(rounds):
        times["base"].append(_timed(baseline, device, 1))
        times["ours"].append(_timed(lambda: ours(x, y, g), device, repeats))
        times["today"].append(_timed(lambda: today(x, y, g), device, repeats))
    rate = {k: statistics.median(batch / t for t in v) for k, v in times.items()}
    ratio = {k: statistics.median(b / t for b, t in zip(times["base"], v)) for k, v in times.items()}
    return [("torchvision v2, per image (loop over the batch)", rate["base"], 1.0),
            ("Augmenter, batched (the same setting)", rate["ours"], ratio["ours"]),
            ("Augmenter, crop + flip only (today's path)", rate["today"], ratio["today"])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=512, help="images per batch (default 512)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating measurement rounds (default 5)")
    ap.add_argument("--devices", nargs="+", default=["cpu", "cuda"], help="cpu and/or cuda (cuda skipped when absent)")
    ap.add_argument("--threads", type=int, default=0, help="torch's CPU threads (default: torch's own choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, batch {args.batch} x 3 x 32 x 32 "
          f"uint8, {args.rounds} rounds; setting: {SETTING}")
    print("| device | pipeline | images/s | x torchvision |")
    print("|---|---|---:|---:|")
    for name in args.devices:
        if name == "cuda" and not torch.cuda.is_available():
            print("| cuda | (no CUDA device here) | | |")
            continue
        device = torch.device(name)
        label = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        for row, rate, ratio in measure(device, args.batch, args.rounds):
            print(f"| {label} | {row} | {rate:,.0f} | {ratio:.1f} |")


if __name__ == "__main__":
    main()
