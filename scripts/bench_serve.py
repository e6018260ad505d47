"""Load-test `digits serve` on this machine, with and without dynamic batching (make bench-serve).

    python scripts/bench_serve.py [--model lenet5] [--requests 2000] [--concurrency 1 8 64]

Starts `digits serve` twice on a free loopback port (``--max-batch 1``: batch-1 serving,
then ``--max-batch 64 --max-wait-ms 2``: dynamic batching), sends a fixed number of
POST /v1/predict requests (one MNIST test digit as a JSON 28x28 array, for one model)
at each concurrency, and writes results/serve-cpu-<date>.{json,md}: requests/s, p50/p99
latency and errors per mode and concurrency, with the machine that made them.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from digits._io import atomic_write_result
from digits.bench.runner import cpu_name
from digits.checkpoint import now_iso
from digits.data import MEAN, STD, default_root, load_test
from digits.export import runtime_versions
from digits.serve.load import run_load

MODES = {"batch-1": ["--max-batch", "1"], "dynamic": ["--max-batch", "64", "--max-wait-ms", "2"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-c", "from digits.cli import app; app()", "serve", "--port", str(port), *args]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
            return proc
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"digits serve did not start: {proc.stderr.read()}") from None
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
    args = ap.parse_args()

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
            batches = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
            rows[-1]["metrics_batch_size"] = [ln for ln in batches.splitlines() if ln.startswith("digits_batch_size_")]
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    env = {"date": now_iso(), "cpu": cpu_name(), **runtime_versions(), "model": args.model,
           "requests_per_level": args.requests, "payload": "JSON 28x28 array (MNIST test digit 0)"}
    stem = args.out / f"serve-cpu-{env['date'][:10]}"
    print(atomic_write_result(stem, {"environment": env, "rows": rows}, to_markdown(env, rows))[1].read_text())


def to_markdown(env: dict, rows: list[dict]) -> str:
    lines = [f"# digits serve load test: {env['cpu']}, {env['date']}", "",
             f"Model {env['model']} via onnxruntime {env['onnxruntime']}; {env['requests_per_level']} requests per level; "
             f"payload: {env['payload']}; client and server on the same machine.", "",
             "| mode | concurrency | requests/s | p50 ms | p99 ms | errors |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['concurrency']} | {r['requests_per_s']:,.0f} | {r['p50_ms']:.2f} | "
                     f"{r['p99_ms']:.2f} | {r['errors']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
