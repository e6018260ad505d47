"""Bounded load generators for a local ``digits serve``: closed loop (N requests at
concurrency C) and open loop (:func:`run_open_loop`, Poisson arrivals at a fixed rate).

In the closed loop, each of C workers holds one keep-alive HTTP/1.1 connection and sends its share of the N
requests back to back; latency is per request on the client, from the first byte sent
to the last byte read. Only loopback hosts are accepted: this measures the server on
this machine, and never sends traffic anywhere else. A time limit bounds every run.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time

from digits.bench.timing import percentile
from digits.errors import UsageError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _loopback_only(host: str) -> None:
    if host not in LOOPBACK:
        raise UsageError(f"The load generator only targets this machine ({', '.join(LOOPBACK)}), not {host!r}.")


def _request(host: str, port: int, path: str, body: bytes, content_type: str) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n").encode() + body


def _without_gc(coro):
    """Run ``coro`` with the collector off: a collection in the client would be timed as the
    server's latency (as the bench timer does)."""
    was = gc.isenabled()
    gc.disable()
    try:
        return asyncio.run(coro)
    finally:
        if was:
            gc.enable()


async def _send(conn, request: bytes) -> tuple[bytes, bool]:
    """(status line, whether the server closes the connection after it). The whole body is
    read, by Content-Length or chunk by chunk (``Transfer-Encoding: chunked``)."""
    reader, writer = conn
    writer.write(request)
    await writer.drain()
    status_line = await reader.readline()
    length, close, chunked = 0, False, False
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == "content-length":
            length = int(value)
        chunked |= name == "transfer-encoding" and value.endswith("chunked")
        close |= name == "connection" and value == "close"
    if not chunked:
        await reader.readexactly(length)
        return status_line, close
    while size := int((await reader.readline()).split(b";")[0], 16):  # each chunk: its size in hex, data, CRLF
        await reader.readexactly(size + 2)
    while (await reader.readline()) not in (b"\r\n", b""):  # trailers, up to the blank line
        pass
    return status_line, close


async def _worker(host: str, port: int, request: bytes, count: int, deadline: float, lat: list, errors: list):
    conn = await asyncio.open_connection(host, port)
    try:
        for _ in range(count):
            if time.perf_counter() > deadline:
                errors.append("time limit")
                return
            t0 = time.perf_counter()
            status_line, _ = await _send(conn, request)
            lat.append((time.perf_counter() - t0) * 1e3)
            if not status_line.startswith(b"HTTP/1.1 200"):
                errors.append(status_line.decode("latin-1").strip())
    except (OSError, asyncio.IncompleteReadError) as e:
        errors.append(f"{type(e).__name__}: {e}")
    finally:
        conn[1].close()


async def _run(host, port, path, body, content_type, concurrency, requests, time_limit):
    request = _request(host, port, path, body, content_type)
    share = [requests // concurrency + (i < requests % concurrency) for i in range(concurrency)]
    lat: list[float] = []
    errors: list[str] = []
    t0 = time.perf_counter()
    deadline = t0 + time_limit
    await asyncio.gather(*(_worker(host, port, request, n, deadline, lat, errors) for n in share if n))
    wall = time.perf_counter() - t0
    s = sorted(lat)
    return {"concurrency": concurrency, "requests": len(lat), "errors": len(errors),
            "error_examples": sorted(set(errors))[:3], "seconds": wall, "requests_per_s": len(lat) / wall,
            "p50_ms": percentile(s, 50) if s else None, "p99_ms": percentile(s, 99) if s else None,
            "mean_ms": statistics.fmean(s) if s else None}


def run_load(host: str, port: int, path: str, body: bytes, *, content_type: str = "application/json",
             concurrency: int = 1, requests: int = 1000, time_limit: float = 120.0) -> dict:
    """``{concurrency, requests, errors, requests_per_s, p50_ms, p99_ms, ...}`` for one load level."""
    _loopback_only(host)
    if concurrency < 1 or requests < 1:
        raise UsageError("concurrency and requests must be at least 1.")
    return _without_gc(_run(host, port, path, body, content_type, concurrency, requests, time_limit))


# --------------------------------------------------------------------------- open loop
async def _open_loop(host, port, request, rate, duration, seed, time_limit):
    import numpy as np

    rng = np.random.default_rng(seed)
    start = time.perf_counter() + 0.05
    gaps = rng.exponential(1 / rate, int(rate * duration * 1.5) + 20)
    arrivals = [start + t for t in np.cumsum(gaps) if t < duration]
    end = start + duration  # the window: answers after it are late, not achieved
    idle: list = []
    opened: list = []  # every connection, so that none outlives the run (a cut-off level leaves some mid-request)
    lat: list[float] = []
    errors: list[str] = []
    in_window = late = 0

    async def one(intended: float) -> None:
        nonlocal in_window, late
        if (delay := intended - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        conn = idle.pop() if idle else None
        try:
            if conn is None:
                conn = await asyncio.open_connection(host, port)
                opened.append(conn)
            status, close = await _send(conn, request)
            now = time.perf_counter()
            lat.append((now - intended) * 1e3)  # from when it should have been sent
            if not status.startswith(b"HTTP/1.1 200"):
                errors.append(status.decode("latin-1").strip())
            elif now <= end:
                in_window += 1
            else:
                late += 1
            if close:
                conn[1].close()
            else:
                idle.append(conn)
        except (OSError, asyncio.IncompleteReadError, ValueError) as e:
            errors.append(f"{type(e).__name__}: {e}")
            if conn:
                conn[1].close()

    try:
        await asyncio.wait_for(asyncio.gather(*(one(t) for t in arrivals)), duration + time_limit)
    except asyncio.TimeoutError:
        errors.append("time limit")
    for _, writer in opened:
        writer.close()
    s = sorted(lat)
    return {"rate_per_s": rate, "sent": len(arrivals), "offered_per_s": len(arrivals) / duration,
            "answered": len(lat), "unanswered": len(arrivals) - len(lat), "errors": len(errors),
            "error_examples": sorted(set(errors))[:3],
            "achieved_per_s": in_window / duration,  # 200s received within the window, over the window
            "late": late,  # 200s received after the window closed: answered, but not at this rate
            "p50_ms": percentile(s, 50) if s else None, "p99_ms": percentile(s, 99) if s else None,
            "max_ms": s[-1] if s else None}


def run_open_loop(host: str, port: int, path: str, body: bytes, *, rate: float, duration: float = 5.0,
                  content_type: str = "application/json", seed: int = 0, time_limit: float = 30.0) -> dict:
    """Requests sent at Poisson arrival times of mean ``rate`` per second for ``duration`` s,
    whatever the server's answers do (an open loop, as a crowd of independent clients sends;
    a closed loop waits for each answer and so hides queueing: coordinated omission).
    Latency counts from each request's *intended* send time. ``achieved_per_s`` counts the
    200s received *within* the window, over the window; those received after it are ``late``
    (a server that falls behind answers them up to ``time_limit`` later, and they must not
    count as throughput at the offered rate). Connections are reused when free and opened
    when not. Loopback only; bounded by ``time_limit`` past ``duration``."""
    _loopback_only(host)
    if rate <= 0 or duration <= 0:
        raise UsageError("rate and duration must be positive.")
    request = _request(host, port, path, body, content_type)
    return _without_gc(_open_loop(host, port, request, rate, duration, seed, time_limit))
