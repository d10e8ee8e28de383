"""Cost of the training statistics (the ``stats`` callback) at the default cadence.

Trains the quickstart (examples/quickstart.toml) with ``diagnostics.stats_every = 0`` (off) and
``= 1`` (on, the default), same seed, and times ``Trainer.fit`` (training,
validation, checkpoints, history: everything but data loading and the final evaluation). Prints

* ``wall ratio``: fit time on / fit time off - 1 (affected by other load on the machine), and
* ``self-timed ratio``: the seconds the callback itself spent (recorded in stats.jsonl) / fit time
  with it on, which other processes disturb much less.

    .venv/bin/python benchmarks/stats_overhead.py [--epochs 30] [--repeat 1]

With --repeat N the off/on pair runs N times, interleaved, and the medians are printed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from cnnlab import rundir as rd
from cnnlab.data import load_data
from cnnlab.experiment import load_config
from cnnlab.runner import _assemble, _trainer
from cnnlab.train import World, read_stats, resolve_device, seed_everything

QUICK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.toml"


def fit_seconds(stats_every: int, epochs: int, root: Path) -> tuple[float, float, int]:
    """(fit wall seconds, seconds spent in the stats callback, epochs run) for one quickstart run."""
    # Not deterministic = true: its kernels are several times slower on the CPU, which would shrink the
    # ratio. The statistics draw no random numbers, so both runs still take the same steps.
    cfg = load_config(QUICK, {"diagnostics.stats_every": stats_every, "train.epochs": epochs, "train.device": "cpu"})
    device = resolve_device(cfg.train.device)
    seed_everything(cfg.seed, cfg.deterministic)
    data = load_data(cfg.data, cfg.seed)
    run_dir = rd.new_run_dir(root, f"stats{stats_every}")
    seed_everything(cfg.seed, cfg.deterministic)
    world = World()
    trainer = _trainer(cfg, data, _assemble(cfg, data, device, world, True, load_transfer=True), device, run_dir,
                       True, world)
    t0 = time.perf_counter()
    trainer.fit()
    wall = time.perf_counter() - t0
    return wall, sum(r["seconds"] for r in read_stats(run_dir)), trainer.epoch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=30, help="quickstart epochs (early stopping may end sooner)")
    ap.add_argument("--repeat", type=int, default=1, help="off/on pairs, interleaved; medians are printed")
    a = ap.parse_args()
    off, on, own = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(a.repeat):
            w_off, _, e_off = fit_seconds(0, a.epochs, Path(tmp))
            w_on, s_on, e_on = fit_seconds(1, a.epochs, Path(tmp))
            assert e_off == e_on, "the statistics changed the training (different epoch counts)"
            off.append(w_off)
            on.append(w_on)
            own.append(s_on / w_on)
    m_off, m_on, m_own = statistics.median(off), statistics.median(on), statistics.median(own)
    print(f"quickstart, {e_on} epochs, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{a.repeat} pair(s)")
    print(f"fit seconds: stats off {m_off:.2f}, stats on {m_on:.2f}")
    print(f"wall ratio (on / off - 1): {m_on / m_off - 1:+.1%}")
    print(f"self-timed ratio (callback seconds / fit seconds): {m_own:.1%}")


if __name__ == "__main__":
    main()
