"""Where a CUDA step's time goes: host wall time per step against the GPU's kernel time per step.

For a lent GPU (scripts/gpu_session.py runs it as the ``profile`` stage). For LeNet-5 it
times, then profiles with ``torch.profiler``:

- the training step of ``--recipe fast`` (batch 256: forward, loss, backward, fused AdamW,
  OneCycle), eager and as a replayed CUDA graph (digits.train_step.StaticStep);
- one inference call at batch 1 and 256, eager and replayed as a CUDA graph.

``wall_us`` is host time per step over N back-to-back steps with one sync at the end
(digits.bench.timing's throughput phase);
``kernel_us`` is the summed duration of the GPU kernels and copies of one step, from the
profiler. A wall time far above the kernel time is launch-bound: the GPU waits for the host.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _per_step(fn, n: int) -> float:
    """Host microseconds per call over ``n`` back-to-back calls, one sync at the end: the
    throughput phase of the one timer (digits.bench.timing)."""
    from digits.bench.timing import measure

    return 1e6 / measure(fn, device="cuda", warmup=10, min_iters=n, min_time=0.0).calls_per_second()


def _kernels(fn, n: int = 20) -> tuple[float, float]:
    """(GPU kernel+copy microseconds per call, kernel launches per call) from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
    events = prof.events()
    gpu = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    if gpu:
        return sum(e.device_time for e in gpu) / n, len(gpu) / n
    # profilers that attach kernels to their CPU ops only: the ops' own device time
    return sum(e.self_device_time_total for e in events) / n, float("nan")


def _row(fn, n: int) -> dict:
    kern, launches = _kernels(fn)
    return {"wall_us": round(_per_step(fn, n), 1), "kernel_us": round(kern, 1), "kernels_per_step": launches}


def _train_step(step, idx, opt, sched):
    def call():
        step(idx, None)
        opt.step()
        sched.step()
    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("DIGITS_DATA", "data"))
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "results")))
    args = parser.parse_args()

    from digits.data import load_splits
    from digits.models import create_model
    from digits.train import RECIPES
    from digits.train_step import StaticStep

    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    splits = load_splits(args.data, seed=0).to(dev)
    rows = {}
    batch = RECIPES["lenet5"]["fast"]["batch_size"]
    for capture in (False, True):
        torch.manual_seed(0)
        model = create_model("lenet5").to(dev, memory_format=torch.channels_last).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=10_000)
        step = StaticStep(model, splits.train_x, splits.train_y, sizes=[batch], label_smoothing=0.1,
                          augment=False, capture=capture)
        step.warm_up()
        idx = torch.randperm(len(splits.train_x), device=dev)[:batch]
        name = f"train step b{batch} " + ("cuda graph" if capture else "eager")
        rows[name] = _row(_train_step(step, idx, opt, sched), 200)
    model = create_model("lenet5").to(dev).eval()
    for b in (1, 256):
        x = splits.test_x[:b].contiguous()
        with torch.inference_mode():
            rows[f"infer b{b} eager"] = _row(functools.partial(model, x), 500)
        static_in = x.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(3):
                model(static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            model(static_in)
        rows[f"infer b{b} cuda graph"] = _row(graph.replay, 500)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"device_name": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}
    (args.out / "profile-cuda.json").write_text(json.dumps(report, indent=2))
    for name, r in rows.items():
        print(f"{name:28s} wall {r['wall_us']:9.1f} us  kernels {r['kernel_us']:9.1f} us  "
              f"launches {r['kernels_per_step']:6.1f}")


if __name__ == "__main__":
    main()
