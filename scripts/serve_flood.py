"""`digits serve` under a flood of slow uploads: memory bounded, ordinary requests still answered.

    python scripts/serve_flood.py --clients 300 --mb 10 --rate-mb 1 --out results

Starts `digits serve --models lenet5` on a free loopback port, then opens ``--clients``
connections at once, each declaring a ``--mb`` MB body and sending it at ``--rate-mb`` MB/s
(64 KiB every so often), as slow phones on a bad network would. Meanwhile one client sends
an ordinary JSON request every 50 ms and times it, and the server's resident memory is
sampled every 10 ms. Writes results/serve-flood-<date>.{json,md}: the status codes the
slow uploads got (most: 503 + Retry-After at once, the body budget being full; those
admitted: 200 or 408 past the body deadline), peak memory above idle, and the ordinary
requests' answers and p99.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import free_port, start, write_run  # noqa: E402
from serve_memory import rss_mb  # noqa: E402

from digits.bench.timing import percentile  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CHUNK = 64 * 1024


async def slow_upload(port: int, size: int, rate: float, codes: list) -> None:
    """One client trickling a ``size``-byte JPEG-typed body at ``rate`` bytes/s; its status code."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        codes.append("connect refused")
        return
    head = (f"POST /v1/predict?model=lenet5 HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: {size}\r\nConnection: close\r\n\r\n").encode()
    status = asyncio.ensure_future(reader.readline())
    try:
        writer.write(head)
        sent = 0
        while sent < size and not status.done():
            n = min(CHUNK, size - sent)
            writer.write(b"\xff" * n)
            await writer.drain()
            sent += n
            await asyncio.wait([status], timeout=n / rate)
        line = await asyncio.wait_for(status, 60)
        codes.append(int(line.split()[1]) if line.startswith(b"HTTP/1.1") else "closed")
    except (OSError, asyncio.TimeoutError, IndexError, ValueError):
        codes.append("closed" if status.done() else "cut")
    finally:
        writer.close()


async def ordinary(port: int, body: bytes, until: list[float], lat: list, codes: list) -> None:
    req = (f"POST /v1/predict?model=lenet5 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    while time.monotonic() < until[0]:
        t0 = time.perf_counter()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(req)
            line = await asyncio.wait_for(reader.readline(), 10)
            codes.append(int(line.split()[1]))
            lat.append((time.perf_counter() - t0) * 1e3)
            writer.close()
        except (OSError, asyncio.TimeoutError, IndexError, ValueError) as e:
            codes.append(type(e).__name__)
        await asyncio.sleep(0.05)


async def flood(port: int, pid: int, clients: int, size: int, rate: float, body: bytes) -> dict:
    idle = rss_mb(pid)
    peak = [idle]
    done = asyncio.Event()

    async def sample():
        while not done.is_set():
            peak.append(rss_mb(pid))
            await asyncio.sleep(0.01)
    codes: list = []
    lat: list[float] = []
    ord_codes: list = []
    sampler = asyncio.ensure_future(sample())
    t0 = time.monotonic()
    slow = [asyncio.ensure_future(slow_upload(port, size, rate, codes)) for _ in range(clients)]
    until = [t0 + size / rate + 2]  # ordinary requests go on while the flood lasts, and 1 s after
    normal = asyncio.ensure_future(ordinary(port, body, until, lat, ord_codes))
    await asyncio.gather(*slow)
    until[0] = min(until[0], time.monotonic() + 1)
    await normal
    done.set()
    await sampler
    s = sorted(lat)
    return {"clients": clients, "body_mb": size / 2**20, "rate_mb_s": rate / 2**20, "seconds": round(time.monotonic() - t0, 1),
            "idle_rss_mb": round(idle, 1), "peak_rss_mb": round(max(peak), 1),
            "peak_above_idle_mb": round(max(peak) - idle, 1),
            "slow_status": {c: [str(x) for x in codes].count(c) for c in sorted({str(x) for x in codes})},
            "ordinary_requests": len(ord_codes), "ordinary_status": {str(c): ord_codes.count(c) for c in set(ord_codes)},
            "ordinary_p50_ms": percentile(s, 50) if s else None, "ordinary_p99_ms": percentile(s, 99) if s else None,
            "ordinary_max_ms": s[-1] if s else None}


def measure(artifacts: Path, clients: int, mb: float, rate_mb: float, extra: list[str]) -> dict:
    import numpy as np

    port = free_port()
    proc = start(["--models", "lenet5", "--artifacts", str(artifacts), *extra], port)
    body = json.dumps({"image": np.zeros((28, 28)).tolist()}).encode()
    try:
        time.sleep(0.5)
        return asyncio.run(flood(port, proc.pid, clients, int(mb * 2**20), rate_mb * 2**20, body))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=300)
    ap.add_argument("--mb", type=float, default=10)
    ap.add_argument("--rate-mb", type=float, default=1.0)
    ap.add_argument("--artifacts", type=Path, default=ROOT / "artifacts")
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    ap.add_argument("--serve-args", default="", help="extra `digits serve` options, e.g. '--body-timeout-s 5'")
    args = ap.parse_args()
    r = measure(args.artifacts, args.clients, args.mb, args.rate_mb, args.serve_args.split())
    write_run(args.out, "serve-flood", "digits serve under a flood of slow uploads", r,
              f"{r['clients']} clients at once, each a {r['body_mb']:g} MB body at {r['rate_mb_s']:g} MB/s: resident "
              f"memory {r['idle_rss_mb']} MB idle, peak {r['peak_rss_mb']} MB (+{r['peak_above_idle_mb']} MB). The slow "
              f"uploads got {r['slow_status']}. Meanwhile {r['ordinary_requests']} ordinary JSON requests: "
              f"{r['ordinary_status']}, p50 {r['ordinary_p50_ms']:.1f} ms, p99 {r['ordinary_p99_ms']:.1f} ms, max "
              f"{r['ordinary_max_ms']:.1f} ms.\n")

if __name__ == "__main__":
    main()
