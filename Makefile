# digits: the commands the README shows. Each target is idempotent.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup setup-gpu run serve test test-oldest lint bench bench-serve bench-train fixture clean

setup: $(STAMP)

# Reinstall only when the package description changes.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,openvino]'
	touch $(STAMP)

# onnxruntime-gpu (extra [gpu]) in place of onnxruntime: both wheels write the same
# `onnxruntime` package, so the CPU wheel is removed and the GPU wheel laid down again over
# what that removal took. `pip check` then reports onnxruntime missing: expected, and safe.
setup-gpu: setup
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,openvino,gpu]'
	$(PY) -m pip uninstall --quiet -y onnxruntime
	$(PY) -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps onnxruntime-gpu
	$(PY) -c "import onnxruntime as o; assert 'CUDAExecutionProvider' in o.get_available_providers(), o.get_available_providers()"

run: setup
	$(VENV)/bin/digits run

# Two pytest-xdist workers (TEST_WORKERS=1: one process): much of the suite waits on
# processes it starts (servers, torchrun ranks, a whole bench), which the other worker
# overlaps. OpenMP threads sleep instead of spinning when idle: spinning, each worker's
# torch threads took the cores from the other's work (2 workers on 2 cores: 222 s, 418 s of
# CPU; passive: 180 s, 330 s; one process: 253 s). With two workers, each one's torch runs
# one thread unless a test asks for more (AMD EPYC Zen 3, 2 cores: 345 s -> 330 s), and so
# does OpenCV's pool, whose idle threads spin too: with 2 threads locating the photo fixture took
# as long and 35% more CPU than with 1, CPU the other worker needed.
TEST_WORKERS ?= 2
pytest = OMP_WAIT_POLICY=PASSIVE $(if $(filter-out 1,$(TEST_WORKERS)),OMP_NUM_THREADS=1 OPENCV_FOR_THREADS_NUM=1) $(1) -m pytest -q \
	$(if $(filter-out 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist worksteal)

test: setup
	$(call pytest,$(PY))

# The whole suite again, in a separate venv holding the lowest version pyproject.toml
# allows of every runtime dependency (torch 2.6, onnxruntime 1.20, ...): the floors are
# tested, not hoped. A first run downloads about 3 GB (torch 2.6 from PyPI). The optional
# OpenVINO extra is left out there, so its tests skip and the rest runs without it.
OLDEST ?= .venv-oldest

test-oldest: $(OLDEST)/.installed
	$(call pytest,$(OLDEST)/bin/python)

$(OLDEST)/.installed: pyproject.toml scripts/oldest_constraints.py
	test -x $(OLDEST)/bin/python || python3 -m venv $(OLDEST)
	python3 scripts/oldest_constraints.py > $(OLDEST)/constraints.txt
	$(OLDEST)/bin/python -m pip install --quiet --disable-pip-version-check -c $(OLDEST)/constraints.txt -e '.[dev]'
	touch $@

lint: setup
	$(VENV)/bin/ruff check digits tests scripts

# pytest-benchmark suite (also run once, untimed, by `make test`).
bench: setup
	$(PY) -m pytest -q -m benchmark --benchmark-enable --benchmark-json=results/pytest-benchmark.json

# Load test of `digits serve` on 127.0.0.1, batch-1 against dynamic batching -> results/serve-cpu-<date>.*
# KSERVE_PYTHON=/path/to/venv/bin/python (a venv with `pip install kserve onnxruntime`) adds
# KServe's ModelServer as the peer; --profile needs py-spy (pip install py-spy).
bench-serve: setup
	$(PY) scripts/bench_serve.py --requests 3000 --out results \
		$(if $(KSERVE_PYTHON),--peer kserve --peer-python $(KSERVE_PYTHON)) $(if $(PROFILE),--profile)

# The drawing page and the API on http://127.0.0.1:8000/ (after `make run`)
serve: setup
	$(VENV)/bin/digits serve

# Accuracy targets: default recipe over 3 seeds -> results/train-<date>.json
bench-train: setup
	$(PY) scripts/bench_train.py --seeds 0 1 2 --out results
	$(PY) scripts/bench_train.py --world-sizes 1 2 --recipe fast --models lenet5 --rounds 3 --out results

fixture: setup
	$(PY) scripts/make_fixture.py

clean:
	rm -rf artifacts .pytest_cache
