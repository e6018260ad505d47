"""Where a CUDA step's time goes: host wall time per step against the GPU's kernel time per step.

For a lent GPU (scripts/gpu_session.py runs it as the ``profile`` stage). For LeNet-5 it
times, then profiles with ``torch.profiler``:

- the training step of ``--recipe fast`` (batch 256: forward, loss, backward, fused AdamW,
  OneCycle), eager and as a replayed CUDA graph (digits.train_step.StaticStep);
- one inference call at batch 1 and 256, eager and replayed as a CUDA graph;
- with ``--levers``, each CUDA-graph lever backend (digits.bench.backends.cudagraph) at batch
  256 for LeNet-5 and the MLP, in fp32, tf32 and fp16, from the checkpoints in
  ``--checkpoint``, with the five longest kernels of each: what a faster graph must cut.

``wall_us`` is host time per step over N back-to-back steps with one sync at the end
(digits.bench.timing's throughput phase);
``kernel_us`` is the summed duration of the GPU kernels and copies of one step, from the
profiler. A wall time far above the kernel time is launch-bound: the GPU waits for the host.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from digits._io import atomic_write_json  # noqa: E402


def _per_step(fn, n: int) -> float:
    """Host microseconds per call over ``n`` back-to-back calls, one sync at the end: the
    throughput phase of the one timer (digits.bench.timing)."""
    from digits.bench.timing import measure

    return 1e6 / measure(fn, device="cuda", warmup=10, min_iters=n, min_time=0.0).calls_per_second()


def _kernels(fn, n: int = 20) -> tuple[float, float, dict]:
    """(GPU kernel+copy microseconds per call, kernel launches per call, the five longest
    kernels' microseconds per call by name) from torch.profiler."""
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
    by_name: dict[str, float] = {}
    for e in gpu:
        by_name[e.name[:90]] = by_name.get(e.name[:90], 0.0) + e.device_time / n
    top = {k: round(v, 2) for k, v in sorted(by_name.items(), key=lambda kv: -kv[1])[:5]}
    if gpu:
        return sum(e.device_time for e in gpu) / n, len(gpu) / n, top
    # profilers that attach kernels to their CPU ops only: the ops' own device time
    return sum(e.self_device_time_total for e in events) / n, float("nan"), top


def _row(fn, n: int) -> dict:
    kern, launches, top = _kernels(fn)
    return {"wall_us": round(_per_step(fn, n), 1), "kernel_us": round(kern, 1), "kernels_per_step": launches,
            "top_kernels_us": top}


LEVERS = ("cudagraph", "cudagraph-autotune", "cudagraph-cl", "cudagraph-tuned", "cudagraph-compile")


def _levers(x: torch.Tensor, checkpoint: Path, backends, rows: dict) -> None:
    """Each lever backend at batch 256, profiled through its own timed ``run``."""
    from digits.bench.backends import create_backend

    for model in ("lenet5", "mlp"):
        for name in backends:
            for precision in ("fp32", "tf32", "fp16"):
                key = f"infer b256 {model} {name} {precision}"
                try:
                    b = create_backend(name).load(model, "cuda", checkpoint=checkpoint, precision=precision)
                    prepared = b.prepare(x[:256].contiguous())
                    rows[key] = _row(functools.partial(b.run, prepared), 500)
                except Exception as e:  # noqa: BLE001 - one lever failing leaves the others' rows
                    rows[key] = {"error": f"{type(e).__name__}: {e}"[:300]}
                print(key, rows[key], flush=True)


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
    parser.add_argument("--checkpoint", type=Path, default=Path("artifacts"))
    parser.add_argument("--levers", nargs="*", default=None, choices=LEVERS,
                        help="profile these CUDA-graph backends at batch 256 (none named: all of them)")
    parser.add_argument("--no-train", action="store_true", help="leave out the training-step rows")
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
    for capture in () if args.no_train else (False, True):
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
    if args.levers is not None:
        _levers(splits.test_x, args.checkpoint, args.levers or LEVERS, rows)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"device_name": torch.cuda.get_device_name(), "torch": torch.__version__,
              "date": dt.date.today().isoformat(), "rows": rows}
    atomic_write_json(args.out / f"profile-cuda-{report['date']}.json", report)
    for name, r in rows.items():
        if "error" not in r:
            print(f"{name:44s} wall {r['wall_us']:9.1f} us  kernels {r['kernel_us']:9.1f} us  "
                  f"launches {r['kernels_per_step']:6.1f}")


if __name__ == "__main__":
    main()
