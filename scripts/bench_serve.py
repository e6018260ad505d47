"""Load-test `digits serve` on this machine, with and without dynamic batching (make bench-serve).

    python scripts/bench_serve.py [--model lenet5] [--requests 2000] [--concurrency 1 8 64]
    python scripts/bench_serve.py --workers-compare   # 1 worker x 2 threads vs 2 workers x 1 thread

Starts `digits serve` twice on a free loopback port (``--max-batch 1``: batch-1 serving,
then ``--max-batch 64 --max-wait-ms 2``: dynamic batching), sends a fixed number of
POST /v1/predict requests (one MNIST test digit as a JSON 28x28 array, for one model)
at each concurrency (closed loop), then, with dynamic batching, an open-loop sweep of
Poisson arrival rates (latency from each request's intended send time) up to the rates
whose p99 passes 50 ms. Writes results/serve-cpu-<date>.{json,md}: requests/s, p50/p99
latency and errors per mode and concurrency, the open-loop levels and the highest rate
with p99 < 50 ms, with the machine that made them.

``--workers-compare`` instead runs dynamic batching at 64 concurrent clients in each layout
of WORKER_LAYOUTS (rounds interleaved) and writes results/serve-workers-cpu-<date>.{json,md}
with each layout's requests/s, latency and batch-size histogram.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from digits._io import atomic_write_result
from digits.bench.runner import cpu_name
from digits.checkpoint import now_iso
from digits.data import MEAN, STD, default_root, load_test
from digits.export import runtime_versions
from digits.serve.load import run_load, run_open_loop

MODES = {"batch-1": ["--max-batch", "1"], "dynamic": ["--max-batch", "64", "--max-wait-ms", "2"]}
WORKER_LAYOUTS = {"1 worker x 2 threads": ["--workers", "1", "--threads", "2"],
                  "2 workers x 1 thread": ["--workers", "2", "--threads", "1"],
                  "1 worker x 1 thread": ["--workers", "1", "--threads", "1"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], port: int, wait: bool = True) -> subprocess.Popen:
    """`digits serve` on ``port``; with ``wait``, once it answers /healthz (else see :func:`wait_ready`)."""
    cmd = [sys.executable, "-c", "from digits.cli import app; app()", "serve", "--port", str(port), *args]
    # The server's stderr goes to a file, never an unread pipe: under a flood uvicorn logs a
    # warning per refused request, and a full pipe would block the server on that write.
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(cmd, stderr=log, text=True)
    proc.log = log
    return wait_ready(proc, port) if wait else proc


def wait_ready(proc: subprocess.Popen, port: int) -> subprocess.Popen:
    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
            return proc
        except OSError:
            if proc.poll() is not None:
                proc.log.seek(0)
                raise SystemExit(f"digits serve did not start: {proc.log.read()[-2000:]}") from None
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("digits serve did not answer /healthz within 60 s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lenet5")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("results"))
    ap.add_argument("--rates", type=float, nargs="+", default=[250, 500, 1000, 1500, 2000, 2500, 3000, 3500, 4000])
    ap.add_argument("--duration", type=float, default=4.0, help="seconds per open-loop rate")
    ap.add_argument("--workers-compare", action="store_true", help="compare the WORKER_LAYOUTS at 64 clients")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per layout with --workers-compare")
    args = ap.parse_args()
    if args.workers_compare:
        return compare_workers(args)
    open_loop: list[dict] = []

    x, y = load_test(args.data_dir or default_root())
    image = (x[0, 0].numpy() * STD + MEAN).clip(0, 1).round(4).tolist()  # the first test digit (a 7), 0..1
    body = json.dumps({"image": image}).encode()
    rows = []
    for mode, flags in MODES.items():
        port = free_port()
        proc = start(["--models", args.model, "--artifacts", str(args.artifacts), *flags], port)
        try:
            run_load("127.0.0.1", port, f"/v1/predict?model={args.model}", body, concurrency=8, requests=200)  # warm-up
            for c in args.concurrency:
                r = run_load("127.0.0.1", port, f"/v1/predict?model={args.model}", body, concurrency=c,
                             requests=args.requests)
                rows.append({"mode": mode, **r})
                print(f"{mode:8} c={c:3} {r['requests_per_s']:8.0f} req/s  p50 {r['p50_ms']:.2f} ms  "
                      f"p99 {r['p99_ms']:.2f} ms  errors {r['errors']}", flush=True)
            if mode == "dynamic":
                open_loop = sweep(port, f"/v1/predict?model={args.model}", body, args.rates, args.duration)
            rows[-1]["metrics_batch_size"] = batch_sizes(port)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    env = {"date": now_iso(), "cpu": cpu_name(), **runtime_versions(), "model": args.model,
           "requests_per_level": args.requests, "payload": "JSON 28x28 array (MNIST test digit 0)",
           "open_loop_seconds_per_rate": args.duration}
    ok = [r for r in open_loop if r["errors"] == 0 and r["unanswered"] == 0 and r["p99_ms"] < P99_LIMIT_MS]
    result = {"environment": env, "rows": rows, "open_loop": open_loop,
              "open_loop_max_rate_p99_under_50ms": max((r["rate_per_s"] for r in ok), default=None)}
    stem = args.out / f"serve-cpu-{env['date'][:10]}"
    print(atomic_write_result(stem, result, to_markdown(env, rows, result))[1].read_text())


P99_LIMIT_MS = 50.0


def batch_sizes(port: int) -> list[str]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    return [ln for ln in text.splitlines() if ln.startswith("digits_batch_size_")]


def compare_workers(args) -> None:
    """Each layout started once; ``--rounds`` rounds of 64 closed-loop clients, interleaved
    across layouts so drift on a shared VM hits them alike; the median round per layout."""
    x, _ = load_test(args.data_dir or default_root())
    body = json.dumps({"image": (x[0, 0].numpy() * STD + MEAN).clip(0, 1).round(4).tolist()}).encode()
    path = f"/v1/predict?model={args.model}"
    servers = {}
    try:
        for layout, flags in WORKER_LAYOUTS.items():
            port = free_port()
            servers[layout] = (port, start(["--models", args.model, "--artifacts", str(args.artifacts),
                                            *MODES["dynamic"], *flags], port))
            run_load("127.0.0.1", port, path, body, concurrency=64, requests=1000)  # warm-up: every worker
        rounds: dict[str, list[dict]] = {k: [] for k in WORKER_LAYOUTS}
        for i in range(args.rounds):
            for layout, (port, _) in servers.items():
                r = run_load("127.0.0.1", port, path, body, concurrency=64, requests=args.requests)
                rounds[layout].append(r)
                print(f"round {i} {layout:22} {r['requests_per_s']:8.0f} req/s  p50 {r['p50_ms']:.2f} ms  "
                      f"p99 {r['p99_ms']:.2f} ms  errors {r['errors']}", flush=True)
        rows = []
        for layout, (port, _) in servers.items():
            median = sorted(rounds[layout], key=lambda r: r["requests_per_s"])[len(rounds[layout]) // 2]
            hist = batch_sizes(port)
            total = next(float(ln.split()[-1]) for ln in hist if ln.startswith("digits_batch_size_sum"))
            calls = next(float(ln.split()[-1]) for ln in hist if ln.startswith("digits_batch_size_count"))
            rows.append({"layout": layout, **median, "rounds_requests_per_s": [r["requests_per_s"] for r in rounds[layout]],
                         "mean_batch": total / calls, "metrics_batch_size": hist})
    finally:
        for _, proc in servers.values():
            proc.terminate()
            proc.wait(timeout=30)
    env = {"date": now_iso(), "cpu": cpu_name(), **runtime_versions(), "model": args.model, "concurrency": 64,
           "requests_per_round": args.requests, "rounds": args.rounds, "payload": "JSON 28x28 array (MNIST test digit 0)"}
    lines = [f"# digits serve: workers x threads at 64 clients: {env['cpu']}, {env['date']}", "",
             f"Model {env['model']} via onnxruntime {env['onnxruntime']}, dynamic batching (max batch 64, 2 ms); "
             f"{args.rounds} interleaved rounds of {args.requests} requests per layout, the median round shown; "
             "client and server on the same machine. Mean batch over every round (the workers' merged histogram).", "",
             "| layout | requests/s (median) | rounds | p50 ms | p99 ms | mean batch | errors |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['layout']} | {r['requests_per_s']:,.0f} | "
                     f"{', '.join(f'{v:,.0f}' for v in r['rounds_requests_per_s'])} | {r['p50_ms']:.2f} | "
                     f"{r['p99_ms']:.2f} | {r['mean_batch']:.1f} | {r['errors']} |")
    stem = args.out / f"serve-workers-cpu-{env['date'][:10]}"
    print(atomic_write_result(stem, {"environment": env, "rows": rows}, "\n".join(lines) + "\n")[1].read_text())


def sweep(port: int, path: str, body: bytes, rates: list[float], duration: float) -> list[dict]:
    """Open-loop levels in increasing rate, until two in a row miss p99 < 50 ms (or err)."""
    levels, misses = [], 0
    for rate in rates:
        r = run_open_loop("127.0.0.1", port, path, body, rate=rate, duration=duration)
        levels.append(r)
        print(f"open loop {rate:6.0f}/s: answered {r['answered']}/{r['sent']}  p50 {r['p50_ms']:.2f} ms  "
              f"p99 {r['p99_ms']:.2f} ms  errors {r['errors']}", flush=True)
        misses = misses + 1 if r["errors"] or r["unanswered"] or r["p99_ms"] >= P99_LIMIT_MS else 0
        if misses == 2:
            break
    return levels


def to_markdown(env: dict, rows: list[dict], result: dict) -> str:
    lines = [f"# digits serve load test: {env['cpu']}, {env['date']}", "",
             f"Model {env['model']} via onnxruntime {env['onnxruntime']}; {env['requests_per_level']} requests per level; "
             f"payload: {env['payload']}; client and server on the same machine.", "",
             "| mode | concurrency | requests/s | p50 ms | p99 ms | errors |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['concurrency']} | {r['requests_per_s']:,.0f} | {r['p50_ms']:.2f} | "
                     f"{r['p99_ms']:.2f} | {r['errors']} |")
    lines += ["", f"Open loop (dynamic batching): Poisson arrivals at a fixed rate for {env['open_loop_seconds_per_rate']:g} s "
              "per level, latency from each request's intended send time. Highest rate with p99 < 50 ms and no "
              f"errors: **{result['open_loop_max_rate_p99_under_50ms'] or 'none'}** requests/s.", "",
              "| rate /s | sent | answered | p50 ms | p99 ms | max ms | errors |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["open_loop"]:
        lines.append(f"| {r['rate_per_s']:,.0f} | {r['sent']} | {r['answered']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                     f"{r['max_ms']:.2f} | {r['errors']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
