"""cnnlab's engine beside the textbook pipeline the seeds use, on one machine, in one run.

Baseline: torchvision datasets (ImageFolder / MNIST) + PIL transforms (RandomCrop(32, 4), flip,
ToTensor, Normalize) + DataLoader with workers + a plain loop; same model, same batch size.
cnnlab: `cnnlab.run` on the same data (the images/s its history records: training steps only,
steady state = the last epoch). Each measurement runs in its own process, so peak memory (max
RSS) is that measurement's own.

    python benchmarks/cpu_speed.py                      # everything, 3 rounds (7 minutes on 2 cores, 2026-12-01)
    python benchmarks/cpu_speed.py --only import eval --rounds 5   # a part

Prints one table: measurement, baseline and cnnlab (medians over the rounds), the median of the
per-round ratios cnnlab / baseline with their range (baseline and cnnlab are measured alternately,
so each ratio compares two measurements a minute apart), or the time and the target for imports.
``eval_compiled`` is the evaluation with ``train.compile = true`` (`cnnlab evaluate --set
train.compile=true`); its compilation time is printed beside the target, not counted in the speed.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
CIFAR = SHARED / "cifar10-jpeg.tar.gz"
WORK = Path(os.environ.get("CNNLAB_BENCH_DIR", Path(tempfile.gettempdir()) / "cnnlab-bench"))
STEPS = 60  # steady-state training steps timed for the baseline, after WARMUP
WARMUP = 5


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _extract_cifar() -> Path:
    """The JPEG archive as a plain folder for ImageFolder (one-off, not timed)."""
    out = WORK / "cifar10-folder"
    if not (out / "cifar10" / "train").is_dir():
        out.mkdir(parents=True, exist_ok=True)
        with tarfile.open(CIFAR) as tar:
            tar.extractall(out, filter="data")
    return out / "cifar10"


def _mnist_root() -> Path:
    """torchvision's MNIST wants the decompressed IDX files under <root>/MNIST/raw."""
    raw = WORK / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for gz in (SHARED / "MNIST" / "raw").glob("*.gz"):
        dst = raw / gz.name[:-3]
        if not dst.exists():
            with gzip.open(gz) as f, open(dst, "wb") as g:
                shutil.copyfileobj(f, g)
    return WORK / "mnist"


def _model(name: str, shape, k: int = 10, **keys):
    from cnnlab.models import build_model

    return build_model({"name": name, **keys}, shape, k)


def _time_loader_training(model, loader, steps: int = STEPS) -> float:
    """images/s of a plain loop over a DataLoader, after WARMUP steps."""
    import torch

    opt = torch.optim.Adam(model.parameters(), 1e-4)
    lossf = torch.nn.CrossEntropyLoss()
    model.train()
    it = iter(loader)
    n, t0 = 0, None
    for step in range(WARMUP + steps):
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        if step == WARMUP:
            t0 = time.perf_counter()
        opt.zero_grad()
        lossf(model(x), y).backward()
        opt.step()
        if step >= WARMUP:
            n += len(y)
    return n / (time.perf_counter() - t0)


# ------------------------------------------------------------------------------------ parts
def part_baseline_cnn(batch: int) -> dict:
    import torch
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize((0.5,) * 3, (0.5,) * 3)])
    ds = ImageFolder(str(_extract_cifar() / "train"), transform=tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=2, persistent_workers=True)
    return {"images_per_s": _time_loader_training(_model("seed000_net1", (3, 32, 32)), loader)}


def _cnnlab_history_rate(cfg: dict) -> float:
    import cnnlab

    run = cnnlab.run(cfg, runs_dir=WORK / "runs", quiet=True)
    return run.history[-1]["images_per_s"]


def part_cnnlab_cnn(batch: int) -> dict:
    cfg = {"name": "bench_cnn", "data": {"dataset": "cifar10", "path": str(CIFAR), "per_class": 600,
                                         "val_fraction": 0.0, "normalize": "half",
                                         "augment": {"crop_padding": 4, "hflip": True}},
           "model": {"name": "seed000_net1"},
           "train": {"epochs": 2, "batch_size": batch, "optimizer": "adam", "lr": 1e-4, "device": "cpu"}}
    return {"images_per_s": _cnnlab_history_rate(cfg)}


def part_baseline_mlp(batch: int) -> dict:
    import torch
    import torchvision.transforms as T
    from torchvision.datasets import MNIST

    ds = MNIST(str(_mnist_root()), train=True, download=False, transform=T.ToTensor())
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=2, persistent_workers=True)
    return {"images_per_s": _time_loader_training(_model("mlp", (1, 28, 28), hidden_size=500), loader, steps=200)}


def part_cnnlab_mlp(batch: int) -> dict:
    cfg = {"name": "bench_mlp", "data": {"dataset": "mnist", "root": str(SHARED), "val_fraction": 0.0,
                                         "normalize": "none"},
           "model": {"name": "mlp", "hidden_size": 500},
           "train": {"epochs": 2, "batch_size": batch, "optimizer": "adam", "lr": 1e-3, "device": "cpu"}}
    return {"images_per_s": _cnnlab_history_rate(cfg)}


def part_baseline_eval(batch: int) -> dict:
    import torch
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    tf = T.Compose([T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3)])
    ds = ImageFolder(str(_extract_cifar() / "test"), transform=tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=False, num_workers=2)
    model = _model("seed000_net1", (3, 32, 32)).eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        n = sum(len(model(x).argmax(1)) for x, _ in loader)
    return {"images_per_s": n / (time.perf_counter() - t0)}


def _cnnlab_eval(batch: int, compile: bool) -> dict:
    """What `cnnlab evaluate` does on the test split (cnnlab.train.Inference + predict), twice: the
    first pass includes one-off setup (oneDNN primitives; with compile, the compilation), the
    second is the steady speed that is compared."""
    import torch

    from cnnlab.config import DataConfig, TrainConfig
    from cnnlab.data import Normalizer, load_data
    from cnnlab.train import DeviceSplit, Inference, predict, prepare_process

    prepare_process(torch.device("cpu"))  # what `cnnlab evaluate` does first (it tunes the host allocator)
    data = load_data(DataConfig(dataset="cifar10", path=str(CIFAR), val_fraction=0.0, normalize="half"), 0)
    inf = Inference.of(_model("seed000_net1", (3, 32, 32)), TrainConfig(compile=compile, eval_batch_size=batch))
    split = DeviceSplit(data.test.x, data.test.y)
    norm = Normalizer(data.mean, data.std, torch.device("cpu"))
    seconds = []
    for _ in range(2):
        t0 = time.perf_counter()
        probs, _ = predict(inf.model, split, norm, batch, channels_last=inf.channels_last, forward=inf.forward)
        seconds.append(time.perf_counter() - t0)
    return {"images_per_s": len(probs) / seconds[1], "first_pass_s": seconds[0],
            "compile_s": inf.forward.compile_seconds if inf.forward is not None else 0.0}


def part_cnnlab_eval(batch: int) -> dict:
    return _cnnlab_eval(batch, compile=False)


def part_cnnlab_eval_compiled(batch: int) -> dict:
    return _cnnlab_eval(batch, compile=True)


def part_import(_batch: int) -> dict:
    """CIFAR-10 from the JPEG archive: cold (empty cache) then cached, in this one process."""
    from cnnlab.config import DataConfig
    from cnnlab.data import load_data

    cfg = DataConfig(dataset="cifar10", path=str(CIFAR))
    t0 = time.perf_counter()
    load_data(cfg, 0)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    load_data(cfg, 0)
    return {"cold_s": cold, "cached_s": time.perf_counter() - t0}


PARTS = {name[5:]: fn for name, fn in dict(globals()).items() if name.startswith("part_")}
PAIRS = {  # short name -> (measurement, baseline part, cnnlab part, batch size, target ratio)
    "train": ("train seed000_net1 CIFAR-10 crop+flip", "baseline_cnn", "cnnlab_cnn", 100, 2.5),
    "mlp": ("train seed 002 MLP MNIST", "baseline_mlp", "cnnlab_mlp", 100, 10.0),
    "eval": ("evaluate seed000_net1 CIFAR-10 test", "baseline_eval", "cnnlab_eval", 500, 5.0),
    "eval_compiled": ("evaluate seed000_net1 CIFAR-10 test, train.compile", "baseline_eval", "cnnlab_eval_compiled",
                      500, 5.0),
}


def _run_part(name: str, batch: int, env: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="cnnlab-inductor-") as cold:
        # A compiled part starts from an empty inductor cache: its compile time is a first-time user's.
        out = subprocess.run([sys.executable, __file__, "--part", name, "--batch", str(batch)], capture_output=True,
                             text=True, env={**env, "TORCHINDUCTOR_CACHE_DIR": cold})
    if out.returncode != 0:
        raise SystemExit(f"part {name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _median(v: list[float]) -> float:
    v = sorted(v)
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=sorted(PARTS))
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--only", nargs="*", choices=["import", *PAIRS], default=None)
    ap.add_argument("--rounds", type=int, default=3,
                    help="baseline and cnnlab measured alternately this many times; medians are compared")
    a = ap.parse_args()
    if a.part:  # child process: one measurement, JSON on the last line
        res = PARTS[a.part](a.batch)
        res["peak_mb"] = round(_peak_mb(), 1)
        print(json.dumps(res))
        return
    if not CIFAR.exists():
        raise SystemExit(f"needs the shared data copies at {SHARED}")
    env = dict(os.environ)
    env["CNNLAB_CACHE"] = str(WORK / "cache")
    env.setdefault("CNNLAB_REPORT", "0")
    shutil.rmtree(WORK / "cache", ignore_errors=True)  # the import part measures a cold cache
    want = set(a.only or ["import", *PAIRS])
    import torch

    print(f"# {time.strftime('%Y-%m-%d')}  torch {torch.__version__}  {os.cpu_count()} CPU cores  "
          f"threads {torch.get_num_threads()}  rounds {a.rounds}")
    rows = []
    if "import" in want:
        r = _run_part("import", 0, env)
        rows.append(("CIFAR-10 import, cold (s)", "-", f"{r['cold_s']:.1f}", "-", "target <= 30 s", f"{r['peak_mb']:.0f}"))
        rows.append(("CIFAR-10 import, cached (s)", "-", f"{r['cached_s']:.2f}", "-", "target <= 1 s", ""))
    for short, (label, base, ours, batch, target) in PAIRS.items():
        if short not in want:
            continue
        # Alternating rounds: this shared 2-core machine drifts by +-25 % over minutes, and a ratio
        # of two measurements made far apart in time would mostly measure that drift.
        bs, cs = [], []
        for _ in range(a.rounds):
            bs.append(_run_part(base, batch, env))
            cs.append(_run_part(ours, batch, env))
        ratios = [c["images_per_s"] / b["images_per_s"] for b, c in zip(bs, cs)]
        b_rate, c_rate = _median([b["images_per_s"] for b in bs]), _median([c["images_per_s"] for c in cs])
        extra = f"; compile {_median([c['compile_s'] for c in cs]):.1f} s from a cold cache" if "compile_s" in cs[0] and cs[0]["compile_s"] else ""
        rows.append((f"{label} (images/s)", f"{b_rate:,.0f}", f"{c_rate:,.0f}",
                     f"**{_median(ratios):.2f}x** ({min(ratios):.2f}-{max(ratios):.2f})",
                     f"target >= {target}x{extra}",
                     f"{max(b['peak_mb'] for b in bs):.0f} / {max(c['peak_mb'] for c in cs):.0f}"))
    print("| measurement | baseline (median) | cnnlab (median) | ratio: median of rounds (range) | target | "
          "peak MB (baseline / cnnlab) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
