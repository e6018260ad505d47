"""The GPU checks of the CUDA work, for a lent GPU machine (the `device` tool), in stages that
each fit its 10-minute command limit. Nothing can be installed there, so ``pack`` (run here,
where pip and MNIST are) prepares what travels:

    python scripts/gpu_session.py pack    # here: gzipped, verified MNIST -> data/, wheels -> .whl/
    # then on the device, carrying ["data", ".whl", "artifacts"], one stage per call:
    python3 scripts/gpu_session.py test   # the whole suite there, CUDA tests included
    python3 scripts/gpu_session.py train  # lenet5 --recipe fast on CUDA, graph on and off, 3 seeds
    python3 scripts/gpu_session.py bench  # export all (fp32, fp16, bf16), then digits bench --device cuda
    python3 scripts/gpu_session.py profile  # scripts/gpu_profile.py: wall time against kernel time
    python3 scripts/gpu_session.py levers   # issue 29: the CUDA-graph levers x fp32/tf32/fp16 at batch 256
    python3 scripts/gpu_session.py levers --compile  # the same for cudagraph-compile (max-autotune)

On the H200, `test` needs a call of its own (on one process over 330 s; spread over 8-12
pytest-xdist workers, carried by `pack`, 197-227 s), `levers` with
``--processes 3`` over 230 s (one process, the default: 35 s), `levers --compile` minutes
per model. So: call 1 `test`; call 2 `levers`, `profile`, then whatever time is left.

Each device stage writes under ``$OUT`` (what the device tool brings back): ``test`` its
log, ``train`` train-cuda-<date>.json, ``bench`` the bench files. The checkpoints are the
ones carried in artifacts/ (the committed CPU run's models), so GPU and CPU figures are of
the same weights; the exports are made again there, by that machine's torch.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA, WHEELS = ROOT / "data", ROOT / ".whl"
# Runtime dependencies the device image lacks (the rest are there); pack pins the versions
# installed here, the ones the suite passed with.
MISSING_THERE = ["fastapi", "starlette", "pydantic", "pydantic-core", "annotated-types", "annotated-doc",
                 "typing-inspection", "uvicorn", "python-multipart", "opentelemetry-api", "prometheus-client", "orjson"]
# Not carried, for size: opencv-python-headless (~50 MB; digits.locate needs it, so if the
# device lacks it, carry it instead of artifacts/) and tritonclient[http] (test-only: the
# KServe v2 tests skip without it).
# Test-only, carried so the suite spreads over the device's 16 cores (one call's 10 minutes
# did not hold the suite on one process there).
TEST_ONLY = ["pytest-xdist", "execnet"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]


def pack(_args) -> None:
    sys.path.insert(0, str(ROOT))
    from digits.data import FILES, _find, default_root, raw_dir, verify_manifest, write_manifest

    src = raw_dir(default_root())
    verify_manifest(src)  # only files that `digits data` verified travel
    dest = raw_dir(DATA)
    dest.mkdir(parents=True, exist_ok=True)
    for name in FILES.values():
        with open(_find(src, name), "rb") as f, gzip.GzipFile(dest / f"{name}.gz", "wb", mtime=0) as gz:
            shutil.copyfileobj(f, gz)
    write_manifest(dest, "gpu_session.py pack: gzipped copy of a verified MNIST")
    pins = [f"{name}=={metadata.version(name)}" for name in MISSING_THERE]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp",
                    *[a for p in PLATFORMS for a in ("--platform", p)], "-d", str(WHEELS), *pins, *TEST_ONLY],
                   check=True)
    print(f"packed {dest} and {WHEELS}; carry data, .whl and artifacts")


def _env() -> dict:
    """PYTHONPATH with the repo and the carried wheels, MNIST from data/."""
    import importlib.util

    site = Path("/tmp/site")
    if WHEELS.is_dir() and not site.is_dir() and importlib.util.find_spec("fastapi") is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--target", str(site), *map(str, WHEELS.glob("*.whl"))], check=True)
    path = os.pathsep.join([str(ROOT), str(site), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "DIGITS_DATA": str(DATA), "PYTHONUNBUFFERED": "1"}


def _digits(*args: str, log=None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", "from digits.cli import app; app()", *args]
    return subprocess.run(cmd, env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True, check=True)


def _out() -> Path:
    out = Path(os.environ.get("OUT", ROOT / "results"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def test(args) -> None:
    env = _env()
    has_xdist = subprocess.run([sys.executable, "-c", "import xdist"], env=env).returncode == 0
    # loadfile: a file's tests share one worker, so its module fixtures are built once
    spread = ["-n", str(args.workers), "--dist", "loadfile"] if has_xdist and args.workers > 1 else []
    with open(_out() / "pytest-gpu.txt", "w") as log:
        # -v: a line per test as it ends, so a run cut off by the call's limit still names its failures
        rc = subprocess.run([sys.executable, "-m", "pytest", "-v", "-rs", "--durations=15", *spread], env=env,
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    print((_out() / "pytest-gpu.txt").read_text()[-3000:])
    sys.exit(rc)


def train(args) -> None:
    runs = []
    for seed in args.seeds:
        for graph in ("--cuda-graph", "--no-cuda-graph"):
            done = _digits("train", "lenet5", "--recipe", "fast", "--device", args.device, graph, "--seed", str(seed),
                           "--out", f"/tmp/train-{seed}{graph}", "--json")
            r = json.loads(done.stdout)
            manifest = json.loads(Path(f"/tmp/train-{seed}{graph}/lenet5/manifest.json").read_text())
            runs.append({"seed": seed, "cuda_graph": manifest["cuda_graph"], "test_accuracy": r["test_accuracy"],
                         "train_seconds": r["train_seconds"], "setup_seconds": manifest["setup_seconds"]})
            print(runs[-1])
    import torch

    sys.path.insert(0, str(ROOT))
    from digits.bench.environment import cpu_name, gpu_facts

    env = {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__, **gpu_facts(args.device == "cuda"),
           "device_name": torch.cuda.get_device_name() if args.device == "cuda" else cpu_name()}
    path = _out() / f"train-{args.device}-{dt.date.today().isoformat()}.json"
    path.write_text(json.dumps({"command": f"digits train lenet5 --recipe fast --device {args.device} [--no-cuda-graph]",
                                "environment": env, "runs": runs}, indent=2))


def bench(args) -> None:
    with open(_out() / "export-gpu.txt", "w") as log:
        _digits("export", "all", "--format", "all", log=log)
        for p in ("fp16", "bf16"):
            _digits("export", "all", "--format", "all", "--precision", p, log=log)
        done = _digits("bench", "--device", args.device, "--out", str(_out()), log=log)
    print(done.stdout)


# The batch-256 targets' sweep: LeNet-5 FP32 graph against the best FP32 non-graph cell, the
# MLP's fp16 graph against FP32 eager; every lever a backend of its own (docs/bench.md).
LEVER_BACKENDS = "eager,torchscript,pt2,cudagraph,cudagraph-autotune,cudagraph-cl,cudagraph-tuned"


def levers(args) -> None:
    """The levers' sweep in ``--processes`` fresh processes (statistics over processes, not calls);
    ``--compile``: cudagraph against cudagraph-compile, in one process (max-autotune compiles
    each shape for tens of seconds; the second process would only read its caches)."""
    out = _out() / ("compile" if args.compile else "levers")
    with open(_out() / f"{out.name}-gpu.txt", "w") as log:
        if not args.compile:
            for model in ("lenet5", "mlp"):
                for fmt in ("torchscript", "pt2"):
                    for p in ("fp32", "fp16"):
                        _digits("export", model, "--format", fmt, "--precision", p, log=log)
        backends = "cudagraph,cudagraph-compile" if args.compile else LEVER_BACKENDS
        precisions = "fp32,tf32,fp16"
        if args.device == "cpu":  # the dry run: the same plumbing, with what a CPU runs
            backends, precisions = ("compile" if args.compile else "eager,torchscript,pt2"), "fp32"
        done = _digits("bench", "--device", args.device, "--models", "lenet5,mlp", "--backends", backends,
                       "--precisions", precisions, "--batch-sizes", "1,256", "--processes",
                       "1" if args.compile else str(args.processes), "--rounds", "3", "--min-time", "0.6",
                       "--out", str(out), log=log)
    print(done.stdout)


def profile(_args) -> None:
    subprocess.run([sys.executable, str(ROOT / "scripts/gpu_profile.py"), "--data", str(DATA), "--out", str(_out())],
                   env=_env(), cwd=ROOT, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="stage", required=True)
    sub.add_parser("pack").set_defaults(run=pack)
    sub.add_parser("test").set_defaults(run=test)
    sub.choices["test"].add_argument("--workers", type=int, default=8)  # pytest-xdist processes, if carried
    sub.add_parser("train").add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    sub.choices["train"].set_defaults(run=train)
    sub.add_parser("bench").set_defaults(run=bench)
    sub.add_parser("profile").set_defaults(run=profile)
    sub.add_parser("levers").set_defaults(run=levers)
    sub.choices["levers"].add_argument("--compile", action="store_true")
    sub.choices["levers"].add_argument("--processes", type=int, default=1)  # 3: over 230 s there, a call of its own
    for stage in ("train", "bench", "levers"):  # --device cpu: a dry run of the stage's plumbing anywhere
        sub.choices[stage].add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
