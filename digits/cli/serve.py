"""``digits serve``: the drawing page and the inference API, on uvicorn."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from digits.cli._common import app, csv_list
from digits.errors import DigitsError
from digits.ui import guard, log


@app.command()
@guard
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0 for every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    artifacts: Annotated[Path, typer.Option("--artifacts", help="Folder `digits export --out` wrote.")] = Path("artifacts"),
    models_: Annotated[str, typer.Option("--models", help="Comma-separated models, or all.")] = "all",
    backend: Annotated[str, typer.Option(help="Runtime for the artifacts: onnxruntime or openvino.")] = "onnxruntime",
    threads: Annotated[int | None, typer.Option(min=1, help="Runtime threads per worker (default: 1 for one worker, "
                                                "whose event loop keeps a core of its own; cores // N for N workers).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Server processes (uvicorn's supervisor); each batches its own "
                                         "connections.")] = 1,
    max_batch: Annotated[int, typer.Option(min=1, help="Largest dynamic batch (1: batch-1 serving).")] = 64,
    max_wait_ms: Annotated[float, typer.Option(min=0.0, help="How long a request waits for others to batch with.")] = 2.0,
    max_body_mb: Annotated[float, typer.Option(min=0.001, help="Largest request body; larger gets 413.")] = 10.0,
    max_queue: Annotated[int, typer.Option(min=1, help="Requests waiting per model; beyond it, 503 + Retry-After.")] = 256,
    timeout_ms: Annotated[float, typer.Option(min=1.0, help="A request not answered by then gets 504.")] = 2000.0,
    limit_concurrency: Annotated[int, typer.Option(min=1, help="Open connections; beyond it uvicorn answers 503.")] = 512,
    grace_s: Annotated[float, typer.Option(min=0.0, help="On SIGTERM or Ctrl-C: time to answer what is queued "
                                           "and in flight before exiting.")] = 10.0,
    decode_concurrency: Annotated[int, typer.Option(min=1, help="Uploaded images decoded at once (bounds memory).")] = 4,
    image_budget: Annotated[float, typer.Option(min=0.01, help="Seconds to find the digits in one upload; a busier "
                                                "image gets 422 and frees its decode slot.")] = 2.0,
    body_budget_mb: Annotated[float, typer.Option(min=0.001, help="Request bodies held at once; a request that would "
                                                  "pass it gets 503 + Retry-After before its body is read.")] = 64.0,
    body_timeout_s: Annotated[float, typer.Option(min=0.01, help="A request body not received by then gets 408.")] = 30.0,
):
    """Serve the exported models: a drawing page at / and a JSON API at /v1/predict."""
    from digits.cores import cores_per_process
    from digits.serve import ServeConfig, create_app
    from digits.serve.app import load_models
    from digits.serve.server import run_server, run_workers

    if backend not in ("onnxruntime", "openvino"):
        raise DigitsError(f"--backend serves exported ONNX files: onnxruntime or openvino, not {backend!r}.", exit_code=2)
    if threads is None:
        threads = 1 if workers == 1 else cores_per_process(workers)
    cfg = ServeConfig(artifacts=artifacts, models=[] if models_ == "all" else csv_list(models_, "models"),
                      backend=backend, threads=threads, max_batch=max_batch, max_wait_ms=max_wait_ms,
                      max_body_bytes=int(max_body_mb * 2**20), max_queue=max_queue, timeout_ms=timeout_ms,
                      limit_concurrency=limit_concurrency, grace_s=grace_s, decode_concurrency=decode_concurrency,
                      image_budget_s=image_budget, body_budget_bytes=int(body_budget_mb * 2**20),
                      body_timeout_s=body_timeout_s)
    if workers > 1:
        names = list(load_models(cfg))  # checked here once, for a clear error before any worker starts
        log(f"digits serve: {', '.join(names)} via {backend} on http://{host}:{port}/ in {workers} workers x "
            f"{threads} runtime thread(s), each batching up to {max_batch} within {max_wait_ms:g} ms.")
        return run_workers(cfg, host=host, port=port, workers=workers)
    application = create_app(cfg)  # loads and sha256-checks every artifact, or refuses to start
    log(f"digits serve: {', '.join(application.state.models)} via {backend} on http://{host}:{port}/ "
        f"(dynamic batching: up to {max_batch} within {max_wait_ms:g} ms). Ctrl-C or SIGTERM stops it gracefully.")
    run_server(application, host=host, port=port, limit_concurrency=limit_concurrency, grace_s=grace_s)
