"""Measure the training targets: test accuracy over several seeds and training time.

    python scripts/bench_train.py --recipe default --seeds 0 1 2      # make bench-train
    python scripts/bench_train.py --recipe fast --models lenet5 --seeds 0 1 2 3 4
    python scripts/bench_train.py --world-sizes 1 2 --recipe fast --models lenet5 --rounds 3

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
    ap.add_argument("--world-sizes", nargs="+", type=int, default=None, help="compare DDP world sizes instead")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if args.world_sizes:
        return compare_world_sizes(args)

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


def compare_world_sizes(args) -> None:
    import json
    import subprocess
    import time

    from digits._io import atomic_write_result

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            for name in args.models:
                for world in args.world_sizes:
                    cmd = [sys.executable, "-m", "digits", "train", name, "--recipe", args.recipe, "--seed",
                           str(args.seeds[0]), "--out", f"{tmp}/w{world}", "--json"]
                    cmd += ["--data-dir", str(args.data_dir)] if args.data_dir else []
                    cmd += ["--nproc", str(world)] if world > 1 else []
                    t0 = time.perf_counter()
                    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
                    wall = time.perf_counter() - t0
                    r = json.loads(done.stdout)
                    manifest = json.loads(Path(f"{tmp}/w{world}/{name}/manifest.json").read_text())
                    runs.append({"round": i, "model": name, "world_size": world, "train_seconds": r["train_seconds"],
                                 "wall_seconds": round(wall, 3), "test_accuracy": r["test_accuracy"],
                                 "threads_per_rank": manifest["threads"], "distributed": manifest["distributed"]})
                    print(f"round {i} {name} W={world}: train {r['train_seconds']:.2f}s wall {wall:.2f}s "
                          f"test {r['test_accuracy']:.4f}", file=sys.stderr, flush=True)
    date = dt.date.today().isoformat()
    env = {"cpu": cpu_name(), "cores": len(os.sched_getaffinity(0)), "date": date, **versions()}
    lines = [f"# digits train: DDP world sizes on {env['cpu']} ({env['cores']} cores), {date}", "",
             f"`{' '.join(['python', *sys.argv])}`: `digits train MODEL --recipe {args.recipe} [--nproc W]`, "
             f"{args.rounds} interleaved rounds, medians. The global batch is the recipe's at every W; "
             "threads per rank: the machine's cores // W.", "",
             "| model | world size | threads/rank | train s (median) | wall s (median) | test accuracy |",
             "|---|---:|---:|---:|---:|---|"]
    for name in args.models:
        for world in args.world_sizes:
            mine = [r for r in runs if r["model"] == name and r["world_size"] == world]
            lines.append(f"| {name} | {world} | {mine[0]['threads_per_rank']} | "
                         f"{statistics.median(r['train_seconds'] for r in mine):.2f} | "
                         f"{statistics.median(r['wall_seconds'] for r in mine):.2f} | "
                         + ", ".join(f"{r['test_accuracy']:.2%}" for r in mine) + " |")
    stem = args.out / f"train-ddp-{date}"
    report = {"command": " ".join(["python", *sys.argv]), "environment": env, "recipe": args.recipe, "runs": runs}
    print(atomic_write_result(stem, report, "\n".join(lines) + "\n")[1].read_text())


if __name__ == "__main__":
    main()
