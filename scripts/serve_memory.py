"""Resident memory of `digits serve` while N clients upload a large phone photo at once.

    python scripts/serve_memory.py [--clients 64] [--megapixels 16] --out results

Starts `digits serve --models lenet5` on a free loopback port, reads its resident set size
(VmRSS in /proc) when idle, then has N threads POST the same JPEG (one committed test photo
scaled up to the given size) at once while the RSS is sampled every 5 ms (a client refused
503 + Retry-After, the server's body budget being full, comes back, as clients should); writes
results/serve-memory-<date>.{json,md}: idle, peak and settled RSS, every status code.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import free_port, start, wait_ready, write_run  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def big_jpeg(megapixels: float) -> bytes:
    photos = ROOT / "tests/data/photos"
    first = json.loads((photos / "photos.json").read_text())["photos"][0]["file"]
    w = int((megapixels * 1e6 * 4 / 3) ** 0.5)
    img = Image.open(photos / first).convert("RGB").resize((w, w * 3 // 4), Image.Resampling.BICUBIC)
    # sensor noise, so that the file is as large as a phone's (a smooth upscale compresses to 1 MB)
    noisy = np.asarray(img, np.int16) + np.random.default_rng(0).normal(0, 6, (img.height, img.width, 1)).astype(np.int16)
    img = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def measure(artifacts: Path, clients: int, megapixels: float) -> dict:
    port = free_port()
    proc = start(["--models", "lenet5", "--artifacts", str(artifacts)], port, wait=False)
    body = big_jpeg(megapixels)  # while the server starts
    wait_ready(proc, port)
    url = f"http://127.0.0.1:{port}/v1/predict?model=lenet5"

    refused: list[int] = []

    def post() -> int:
        """As a well-behaved client: a 503 with Retry-After (the body budget full) is retried."""
        for _ in range(60):
            req = urllib.request.Request(url, data=body, headers={"Content-Type": "image/jpeg"})
            try:
                with urllib.request.urlopen(req, timeout=120) as r:
                    return r.status
            except urllib.error.HTTPError as e:
                if e.code != 503 or not e.headers.get("Retry-After"):
                    return e.code
                refused.append(e.code)
                time.sleep(0.2)  # Retry-After says 1 s; the test's clients come back sooner
            except (ConnectionError, urllib.error.URLError):  # refused before the body was read: the socket is cut
                refused.append(0)
                time.sleep(0.2)
        return 503
    try:
        post()  # warm: the first upload loads what decoding needs
        time.sleep(1)
        idle = rss_mb(proc.pid)
        peak, stop = [idle], threading.Event()

        def sample():
            while not stop.is_set():
                peak.append(rss_mb(proc.pid))
                time.sleep(0.005)
        sampler = threading.Thread(target=sample)
        sampler.start()
        codes: list[int] = []
        threads = [threading.Thread(target=lambda: codes.append(post())) for _ in range(clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        took = time.perf_counter() - t0
        time.sleep(1)
        stop.set()
        sampler.join()
        settled = rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {"clients": clients, "megapixels": megapixels, "jpeg_bytes": len(body), "idle_rss_mb": round(idle, 1),
            "peak_rss_mb": round(max(peak), 1), "peak_above_idle_mb": round(max(peak) - idle, 1),
            "settled_rss_mb": round(settled, 1), "seconds": round(took, 2),
            "status_codes": {str(c): codes.count(c) for c in sorted(set(codes))}, "answered": len(codes),
            "retried_after_503": len(refused)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--megapixels", type=float, default=16)
    ap.add_argument("--artifacts", type=Path, default=ROOT / "artifacts")
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    args = ap.parse_args()
    r = measure(args.artifacts, args.clients, args.megapixels)
    write_run(args.out, "serve-memory", "digits serve memory under uploads", r,
              f"{r['clients']} concurrent uploads of a {r['megapixels']:g}-MP JPEG ({r['jpeg_bytes'] / 1e6:.1f} MB): "
              f"resident memory {r['idle_rss_mb']} MB idle, peak {r['peak_rss_mb']} MB (+{r['peak_above_idle_mb']} MB), "
              f"{r['settled_rss_mb']} MB after; {r['answered']} answered in {r['seconds']} s, status codes "
              f"{r['status_codes']} ({r['retried_after_503']} uploads refused 503 with Retry-After first: the body "
              f"budget, and retried).\n")

if __name__ == "__main__":
    main()
