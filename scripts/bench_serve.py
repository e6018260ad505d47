"""Load-test `digits serve` against the floor (a bare ASGI app) and a peer, on this machine (make bench-serve).

    python scripts/bench_serve.py [--model lenet5] [--requests 2000] [--rounds 2] [--peer kserve]
    python scripts/bench_serve.py --profile      # also a py-spy flame graph of digits serve under load

Starts, on free loopback ports, the **floor** (``scripts/serve_floor.py``: read, ``json.loads``,
numpy, one onnxruntime batch-1 call, a JSON answer; same uvicorn, loop and HTTP), `digits
serve` with batch-1 serving (``--max-batch 1``), with dynamic batching (``--max-batch 64
--max-wait-ms 2``) and with dynamic batching in 2 workers x 1 thread, and with ``--peer
kserve`` KServe's ModelServer (``scripts/serve_kserve.py``, run by ``--peer-python``: a venv
with the optional ``kserve`` package) on the same ``model.onnx``. Each is loaded closed-loop
at each concurrency on ``/v1/predict`` (a JSON 28x28 array) and the v2 infer route (FP32
[1,1,28,28] JSON), ``--rounds`` rounds interleaved across servers, the better round kept
(as `digits bench` keeps rounds apart). Per level: requests/s, p50, p99, errors, the
server's **CPU seconds per request** (utime + stime of its process tree from /proc, before
and after: the client shares the cores, this figure does not depend on it) and, for
`digits serve`, the **mean batch** (from its /metrics). Every figure is also given as a ratio
to the floor's on the same route. Then an open-loop sweep of Poisson arrival rates on the
dynamic server: offered, achieved (200s received within the window), late, p50, p99,
errors. Writes results/serve-cpu-<date>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
from digits.errors import DigitsError
from digits.export import artifact_name, runtime_versions
from digits.models import list_models
from digits.serve.load import run_load, run_open_loop

HERE = Path(__file__).resolve().parent
SERVE = [sys.executable, "-c", "from digits.cli import app; app()", "serve"]
P99_LIMIT_MS = 50.0


def write_run(out: Path, name: str, title: str, result: dict, text: str) -> None:
    """``<out>/<name>-<date>.{json,md}``: ``result`` with its environment (date, CPU, the command
    line that made it), and ``text`` under a title naming the machine; the Markdown is printed."""
    env = {"date": now_iso(), "cpu": cpu_name(),
           "command": " ".join(["python", f"scripts/{Path(sys.argv[0]).name}", *sys.argv[1:]])}
    md = f"# {title}: {env['cpu']}, {env['date']}\n\n`{env['command']}`\n\n{text}"
    print(atomic_write_result(out / f"{name}-{env['date'][:10]}", {"environment": env, **result}, md)[1].read_text())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], port: int, wait: bool = True, cmd: list[str] | None = None,
          ready: str = "/healthz") -> subprocess.Popen:
    """`digits serve` (or ``cmd``) on ``port``; with ``wait``, once it answers ``ready``."""
    cmd = [*(cmd or SERVE), "--port", str(port), *args]
    # The server's stderr goes to a file, never an unread pipe: under a flood uvicorn logs a
    # warning per refused request, and a full pipe would block the server on that write.
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(cmd, stderr=log, stdout=log, text=True)
    proc.log, proc.ready = log, ready
    return wait_ready(proc, port) if wait else proc


def wait_ready(proc: subprocess.Popen, port: int) -> subprocess.Popen:
    for _ in range(900):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{getattr(proc, 'ready', '/healthz')}", timeout=1).read()
            return proc
        except OSError:
            if proc.poll() is not None:
                proc.log.seek(0)
                raise SystemExit(f"{proc.args[:4]} did not start: {proc.log.read()[-2000:]}") from None
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not answer within 90 s")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and every live descendant (the workers of --workers)."""
    ticks, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


def batch_totals(port: int) -> tuple[float, float] | None:
    """(rows, runtime calls) so far, from `digits serve`'s /metrics; None for other servers."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    except OSError:
        return None
    total = sum(float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith("digits_batch_size_sum"))
    calls = sum(float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith("digits_batch_size_count"))
    return total, calls


def level(server: dict, route: str, body: bytes, c: int, requests: int) -> dict:
    before, b0 = cpu_seconds(server["proc"].pid), batch_totals(server["port"])
    r = run_load("127.0.0.1", server["port"], server["paths"][route], body, concurrency=c, requests=requests)
    cpu, b1 = cpu_seconds(server["proc"].pid) - before, batch_totals(server["port"])
    r["cpu_ms_per_request"] = cpu / max(r["requests"], 1) * 1e3
    r["mean_batch"] = (b1[0] - b0[0]) / (b1[1] - b0[1]) if b0 and b1 and b1[1] > b0[1] else None
    return r


def servers(args, model: str) -> dict[str, dict]:
    art = str(args.artifacts)
    v1, v2 = f"/v1/predict?model={model}", f"/v2/models/{model}/infer"
    both = {"v1": v1, "v2": v2}
    spec = {"floor": ([sys.executable, str(HERE / "serve_floor.py"), "--artifacts", art, "--model", model], [], both),
            "batch-1": (SERVE, ["--models", model, "--artifacts", art, "--max-batch", "1"], both),
            "dynamic": (SERVE, ["--models", model, "--artifacts", art, "--max-batch", "64", "--max-wait-ms", "2"], both),
            "dynamic, 2 workers": (SERVE, ["--models", model, "--artifacts", art, "--max-batch", "64", "--max-wait-ms",
                                           "2", "--workers", "2", "--threads", "1"], both)}
    if args.peer == "kserve":
        spec["kserve"] = ([args.peer_python, str(HERE / "serve_kserve.py"), "--artifacts", art, "--model", model], [],
                          {"v2": v2})
    out = {}
    for name, (cmd, extra, paths) in spec.items():
        port = free_port()
        ready = "/v2/health/ready" if name == "kserve" else "/healthz"
        proc = start(extra, port, cmd=cmd if cmd is not SERVE else None, ready=ready)
        out[name] = {"port": port, "proc": proc, "paths": paths}
    return out


def profile(server: dict, body: bytes, out: Path, seconds: float = 10) -> str | None:
    """A py-spy flame graph (--native) of the server while 64 clients load /v1/predict."""
    spy_bin = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if not spy_bin:
        print("py-spy is not installed (pip install py-spy): no flame graph", flush=True)
        return None
    svg = out / f"serve-flame-{now_iso()[:10]}.svg"
    cmd = [spy_bin, "record", "--native", "--rate", "200", "--duration", str(int(seconds)), "--format", "flamegraph",
           "--output", str(svg), "--pid", str(server["proc"].pid)]
    spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(1)
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end and spy.poll() is None:
        run_load("127.0.0.1", server["port"], server["paths"]["v1"], body, concurrency=64, requests=2000)
    err = spy.communicate(timeout=60)[1]
    if spy.returncode:
        print(f"py-spy failed: {err[-500:]}", flush=True)
        return None
    return " ".join(["py-spy", *cmd[1:]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lenet5", choices=list_models())
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("results"))
    ap.add_argument("--rates", type=float, nargs="+", default=[500, 1000, 1500, 2000, 2500, 3000, 3500, 4000, 5000])
    ap.add_argument("--duration", type=float, default=4.0, help="seconds per open-loop rate")
    ap.add_argument("--peer", choices=["kserve"], default=None, help="also load KServe's ModelServer (v2 only)")
    ap.add_argument("--peer-python", default=sys.executable, help="a Python with the kserve package")
    ap.add_argument("--profile", action="store_true", help="record a py-spy flame graph of the dynamic server")
    args = ap.parse_args()
    onnx = args.artifacts / args.model / artifact_name("onnx")  # what every server here loads
    if not onnx.is_file():
        ap.error(f"--artifacts {args.artifacts}: no {onnx}: run `digits export {args.model} --format onnx` first")
    try:
        x, _ = load_test(args.data_dir or default_root())
    except DigitsError as e:
        ap.error(f"--data-dir {args.data_dir or default_root()}: {e}")
    digit = (x[0, 0].numpy() * STD + MEAN).clip(0, 1).round(4)  # the first test digit (a 7), 0..1
    bodies = {"v1": json.dumps({"image": digit.tolist()}).encode(),
              "v2": json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28],
                                            "data": ((digit - MEAN) / STD).round(5).ravel().tolist()}]}).encode()}
    running = servers(args, args.model)
    best: dict[tuple, dict] = {}
    try:
        for s in running.values():  # warm-up: every worker, every route
            for route, path in s["paths"].items():
                run_load("127.0.0.1", s["port"], path, bodies[route], concurrency=8, requests=400)
        for rnd in range(args.rounds):
            for c in args.concurrency:
                for name, s in running.items():
                    for route in s["paths"]:
                        r = level(s, route, bodies[route], c, args.requests)
                        print(f"round {rnd} {name:18} {route} c={c:3} {r['requests_per_s']:7.0f} req/s  p50 "
                              f"{r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  cpu {r['cpu_ms_per_request']:.3f} "
                              f"ms/req  errors {r['errors']}", flush=True)
                        k = (name, route, c)
                        if k not in best or r["requests_per_s"] > best[k]["requests_per_s"]:
                            best[k] = {"server": name, "route": route, **r, "round": rnd}
        open_loop = sweep(running["dynamic"], bodies["v1"], args.rates, args.duration)
        flame = profile(running["dynamic"], bodies["v1"], args.out) if args.profile else None
    finally:
        for s in running.values():
            s["proc"].terminate()
            s["proc"].wait(timeout=30)
    rows = list(best.values())
    for r in rows:
        floor = best.get(("floor", r["route"], r["concurrency"]))
        r["vs_floor"] = {"requests_per_s": r["requests_per_s"] / floor["requests_per_s"],
                         "p50": r["p50_ms"] / floor["p50_ms"], "p99": r["p99_ms"] / floor["p99_ms"],
                         "cpu_per_request": r["cpu_ms_per_request"] / floor["cpu_ms_per_request"]} if floor else None
    env = {"date": now_iso(), "cpu": cpu_name(), **runtime_versions(), "model": args.model,
           "requests_per_level": args.requests, "rounds": args.rounds, "open_loop_seconds_per_rate": args.duration,
           "command": "python scripts/bench_serve.py " + " ".join(sys.argv[1:]), "flame_graph_command": flame}
    ok = [r for r in open_loop if kept_up(r)]
    result = {"environment": env, "rows": rows, "open_loop": open_loop,
              "open_loop_max_rate_p99_under_50ms": max((r["rate_per_s"] for r in ok), default=None)}
    stem = args.out / f"serve-cpu-{env['date'][:10]}"
    print(atomic_write_result(stem, result, to_markdown(env, rows, result))[1].read_text())


def kept_up(r: dict) -> bool:
    """p99 under 50 ms, no errors, everything answered, and at least 95% of the offered rate
    achieved within the window (a few answers to the last requests always land after it)."""
    return (r["errors"] == 0 and r["unanswered"] == 0 and r["p99_ms"] < P99_LIMIT_MS
            and r["achieved_per_s"] >= 0.95 * r["offered_per_s"])


def sweep(server: dict, body: bytes, rates: list[float], duration: float) -> list[dict]:
    """Open-loop levels in increasing rate, until two in a row do not keep up (:func:`kept_up`)."""
    levels, misses = [], 0
    for rate in rates:
        r = run_open_loop("127.0.0.1", server["port"], server["paths"]["v1"], body, rate=rate, duration=duration)
        levels.append(r)
        print(f"open loop {rate:6.0f}/s: achieved {r['achieved_per_s']:.0f}/s, late {r['late']}  p50 {r['p50_ms']:.2f} ms"
              f"  p99 {r['p99_ms']:.2f} ms  errors {r['errors']}", flush=True)
        misses = 0 if kept_up(r) else misses + 1
        if misses == 2:
            break
    return levels


def _ratio(v: float | None) -> str:
    return "" if v is None else f"{v:.2f}x"


def to_markdown(env: dict, rows: list[dict], result: dict) -> str:
    lines = [f"# digits serve load test: {env['cpu']}, {env['date']}", "", f"`{env['command']}`", "",
             f"Model {env['model']} via onnxruntime {env['onnxruntime']}; {env['requests_per_level']} requests per level, "
             f"the better of {env['rounds']} interleaved rounds; v1: JSON 28x28 array, v2: Open Inference Protocol JSON "
             "FP32 [1,1,28,28]; client and server share the machine. cpu ms/req: the server's process tree's CPU time "
             "over the requests answered. x floor: the same figure over the floor's on the same route and "
             "concurrency (scripts/serve_floor.py: a bare ASGI app doing only the necessary work).", "",
             "| server | route | c | req/s | x floor | p50 ms | x floor | p99 ms | cpu ms/req | x floor | mean batch | errors |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["route"], r["concurrency"])):
        f = r["vs_floor"] or {}
        batch = "" if r["mean_batch"] is None else f"{r['mean_batch']:.1f}"
        lines.append(f"| {r['server']} | {r['route']} | {r['concurrency']} | {r['requests_per_s']:,.0f} | "
                     f"{_ratio(f.get('requests_per_s'))} | {r['p50_ms']:.2f} | {_ratio(f.get('p50'))} | "
                     f"{r['p99_ms']:.2f} | {r['cpu_ms_per_request']:.3f} | {_ratio(f.get('cpu_per_request'))} | "
                     f"{batch} | {r['errors']} |")
    lines += ["", f"Open loop (dynamic batching, v1): Poisson arrivals at a fixed rate for "
              f"{env['open_loop_seconds_per_rate']:g} s per level, latency from each request's intended send time; "
              "achieved: 200s received within the window, over the window; late: answered after it. Highest rate with "
              "p99 < 50 ms, no errors, everything answered and >= 95% of the offered rate achieved: "
              f"**{result['open_loop_max_rate_p99_under_50ms'] or 'none'}** requests/s.", "",
              "| offered /s | sent | achieved /s | late | p50 ms | p99 ms | max ms | errors |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["open_loop"]:
        lines.append(f"| {r['offered_per_s']:,.0f} | {r['sent']} | {r['achieved_per_s']:,.0f} | {r['late']} | "
                     f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['max_ms']:.2f} | {r['errors']} |")
    if env.get("flame_graph_command"):
        lines += ["", f"Flame graph of the dynamic server under 64 clients: `{env['flame_graph_command']}`."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
