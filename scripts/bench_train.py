"""Measure the training targets: test accuracy over several seeds and training time.

    python scripts/bench_train.py --recipe default --seeds 0 1 2      # make bench-train
    python scripts/bench_train.py --recipe fast --models lenet5 --seeds 0 1 2 3 4

Trains each model once per seed on full MNIST (checkpoints go to a temporary folder,
so your artifacts/ stay untouched) and writes results/train-<recipe>-<date>.json with
every run, the per-model mean, and the machine it ran on. Figures in the README come
from these files.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from digits._io import atomic_write_json
from digits.bench.runner import cpu_name
from digits.checkpoint import versions
from digits.data import default_root, load_splits
from digits.models import list_models
from digits.sources import ensure_mnist
from digits.train import resolve_config, train


def main() -> None:
    ap = argparse.ArgumentParser(description="Training accuracy/time over seeds.")
    ap.add_argument("--models", nargs="+", default=list_models())
    ap.add_argument("--recipe", default="default")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("results"))
    args = ap.parse_args()

    root = args.data_dir or default_root()
    ensure_mnist(root, log=lambda m: print(m, file=sys.stderr))
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            splits = load_splits(root, seed=seed)
            for name in args.models:
                cfg = resolve_config(name, args.recipe, seed=seed, threads=args.threads)
                r = train(cfg, splits, tmp)
                runs.append({**{k: v for k, v in r.to_dict().items() if k not in ("history", "checkpoint")},
                             "config": vars(cfg)})
                print(f"{name:7s} seed {seed}: test {r.test_accuracy:.4f} val {r.val_accuracy:.4f} "
                      f"train {r.train_seconds:.1f}s", file=sys.stderr, flush=True)
    summary = {}
    for name in args.models:
        mine = [r for r in runs if r["model"] == name]
        acc = [r["test_accuracy"] for r in mine]
        secs = [r["train_seconds"] for r in mine]
        summary[name] = {"mean_test_accuracy": statistics.mean(acc), "min_test_accuracy": min(acc),
                         "max_test_accuracy": max(acc), "mean_train_seconds": statistics.mean(secs),
                         "max_train_seconds": max(secs), "seeds": len(mine)}
    per_seed_total = [sum(r["train_seconds"] for r in runs if r["seed"] == s) for s in args.seeds]
    date = dt.date.today().isoformat()
    report = {
        "command": " ".join(["python", *sys.argv]),
        "environment": {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
                        "date": date, **versions()},
        "recipe": args.recipe, "summary": summary,
        "train_seconds_all_models_per_seed": per_seed_total, "runs": runs,
    }
    path = atomic_write_json(args.out / f"train-{args.recipe}-{date}.json", report)
    for name, s in summary.items():
        print(f"{name:7s} mean test {s['mean_test_accuracy']:.4%} (min {s['min_test_accuracy']:.4%}) "
              f"mean train {s['mean_train_seconds']:.1f}s (max {s['max_train_seconds']:.1f}s)")
    print(f"all models, per seed: {', '.join(f'{t:.1f}s' for t in per_seed_total)}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
