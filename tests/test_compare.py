"""`digits compare`: ratio of medians, confidence interval, significance; `--merge` by machine."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from digits.bench.compare import compare_runs, mann_whitney_p, merge, ratio_ci
from digits.cli import app

runner = CliRunner()


def _report(cpu: str, rounds: dict[tuple, list[float]], torch_version: str = "2.14.1") -> dict:
    records = [{"model": m, "backend": be, "precision": "fp32", "device": "cpu", "batch_size": b,
                "p50_ms": float(np.median(r)), "p99_ms": max(r), "throughput": b / float(np.median(r)) * 1e3,
                "accuracy": 0.99, "round_p50_ms": r, "error": None, "parity": {"passed": True}, "cell_parity": {"passed": True},
                "untrusted": None} for (m, be, b), r in rounds.items()]
    return {"environment": {"cpu": cpu, "cores": 2, "threads": 2, "device": "cpu", "device_name": cpu,
                            "torch": torch_version, "date": "2026-11-29T00:00:00"}, "records": records}


ROUNDS = {("lenet5", "eager", 1): [0.101, 0.099, 0.100, 0.102, 0.098],
          ("lenet5", "onnxruntime", 1): [0.051, 0.049, 0.050, 0.052, 0.048]}


def test_mann_whitney_matches_scipys_documented_examples():
    # scipy.stats.mannwhitneyu's own example (diagnosis ages): exact, two-sided p = 0.1111111111111111
    males, females = np.array([19, 22, 16, 29, 24.0]), np.array([20, 11, 17, 12.0])
    assert mann_whitney_p(males, females) == pytest.approx(0.1111111111111111, rel=1e-12)
    # 5 values against 50 (A. Akinshin's post on scipy's method choice): scipy's `auto` is exact
    # because ONE sample has <= 8 values. One-sided exact 2.874586670369134e-07 and asymptotic
    # 0.00013370277743792665; two-sided, both doubled.
    x, y = np.arange(101, 106.0), np.arange(1, 51.0)
    assert mann_whitney_p(x, y) == pytest.approx(2 * 2.874586670369134e-07, rel=1e-9)
    assert mann_whitney_p(x, y, method="asymptotic") == pytest.approx(2 * 0.00013370277743792665, rel=1e-9)
    # fully separated samples of 5: 2 / C(10, 5)
    assert mann_whitney_p(np.arange(1, 6.0), np.arange(6, 11.0)) == pytest.approx(2 / 252)
    assert mann_whitney_p(np.ones(5), np.ones(5)) == 1.0  # identical: no evidence at all
    rng = np.random.default_rng(0)
    a = rng.normal(size=300)
    assert mann_whitney_p(a, a + 1.0) < 1e-10  # a shift of one sigma over 300 values
    assert mann_whitney_p(a, rng.permutation(a)) > 0.5  # the same values, reordered


def test_the_ratio_interval_covers_the_true_ratio():
    rng = np.random.default_rng(1)
    before, after = rng.normal(100, 5, 400), rng.normal(150, 5, 400)
    lo, hi = ratio_ci(before, after)
    assert lo < 1.5 < hi and hi - lo < 0.05


def test_a_run_compared_with_itself_shows_no_difference():
    rep = _report("Intel Xeon", ROUNDS)
    result = compare_runs(rep, rep)
    assert result["environment"] == [] and result["same_machine"]
    assert len(result["rows"]) == 2 and not any(r["significant"] for r in result["rows"])
    assert all(r["ratio"] == 1.0 and r["ci_low"] <= 1 <= r["ci_high"] for r in result["rows"])


def test_a_real_slowdown_is_significant_and_exits_1(tmp_path):
    slower = {k: [v * 1.3 for v in r] if k[1] == "eager" else r for k, r in ROUNDS.items()}
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_report("Intel Xeon", ROUNDS)))
    b.write_text(json.dumps(_report("Intel Xeon", slower, torch_version="2.15.0")))
    rows = {r["backend"]: r for r in compare_runs(json.loads(a.read_text()),
                                                  json.loads(b.read_text()))["rows"]}
    assert rows["eager"]["significant"] and rows["eager"]["ratio"] == pytest.approx(1.3)
    assert rows["eager"]["ci_low"] > 1 and not rows["onnxruntime"]["significant"]
    result = runner.invoke(app, ["compare", str(a), str(b)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    text = " ".join(result.output.split())
    assert "Environment differences" in text and text.index("Environment differences") < text.index("a.json -> b.json")
    assert "1 of 2 cells changed significantly by more than 5%" in text
    same = runner.invoke(app, ["compare", str(a), str(a)])
    assert same.exit_code == 0 and "0/2 cells differ significantly" in " ".join(same.output.split())


def test_repetitions_are_the_unit_and_the_ratio_lies_in_its_own_interval(tmp_path):
    """Per-call latencies never enter the test: thousands of calls made a 2% shift look like
    p < 1e-6. Five round p50s a side, with round-to-round noise larger than the shift, do not."""
    import gzip

    rng = np.random.default_rng(2)
    for name, scale in (("a", 1.0), ("b", 1.02)):
        rounds = {k: list(np.asarray(r) * scale * rng.normal(1, 0.03, 5)) for k, r in ROUNDS.items()}
        (tmp_path / f"{name}.json").write_text(json.dumps(_report("Intel Xeon", rounds)))
        samples = {f"lenet5/{be}/fp32/cpu/1": list(rng.normal(0.1 * scale, 0.002, 3000)) for _, be, _ in ROUNDS}
        with gzip.open(tmp_path / f"{name}-samples.json.gz", "wt") as f:
            json.dump({"samples_ms": samples}, f)
    result = runner.invoke(app, ["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--json"])
    body = json.loads(result.stdout)
    assert body["basis"].startswith("per-round") and all(r["n_before"] == 5 for r in body["rows"])
    assert all(r["p_value"] > 1e-3 for r in body["rows"])
    assert all(r["ci_low"] <= r["ratio"] <= r["ci_high"] for r in body["rows"])
    assert result.exit_code == 0


def test_per_process_p50s_are_the_samples_when_both_runs_have_them():
    a, b = _report("Intel Xeon", ROUNDS), _report("Intel Xeon", ROUNDS)
    for rec in a["records"]:
        rec["process_p50_ms"] = [rec["p50_ms"] * f for f in (0.99, 1.0, 1.01, 1.0, 0.995, 1.005)]
    for rec in b["records"]:
        rec["process_p50_ms"] = [rec["p50_ms"] * 1.2 * f for f in (0.99, 1.0, 1.01, 1.0, 0.995, 1.005)]
    result = compare_runs(a, b)
    assert result["basis"].startswith("per-process") and all(r["n_before"] == 6 for r in result["rows"])
    assert all(r["ratio"] == pytest.approx(1.2) and r["matters"] for r in result["rows"])
    del b["records"][0]["process_p50_ms"]  # one side without: that cell falls back to its rounds
    assert compare_runs(a, b)["rows"][0]["basis"] == "rounds"


def test_merge_keeps_each_machine_apart(tmp_path):
    a, b = tmp_path / "intel.json", tmp_path / "amd.json"
    a.write_text(json.dumps(_report("Intel Xeon", ROUNDS)))
    b.write_text(json.dumps(_report("AMD EPYC", {("mlp", "eager", 8): [0.2] * 5})))
    blocks = merge([("intel.json", json.loads(a.read_text())), ("amd.json", json.loads(b.read_text()))])
    sections = [text for kind, text, *_ in blocks if kind == "h2"]
    assert sections == ["Intel Xeon, 2 cores", "AMD EPYC, 2 cores"]
    tables = [rows for kind, _, rows in (blk for blk in blocks if blk[0] == "table")]
    assert {r[0] for r in tables[0]} == {"lenet5"} and {r[0] for r in tables[1]} == {"mlp"}  # never mixed
    out = tmp_path / "merged.md"
    result = runner.invoke(app, ["compare", "--merge", str(a), str(b), "--out", str(out), "--html"])
    assert result.exit_code == 0, result.output
    assert "## AMD EPYC, 2 cores" in out.read_text() and "<table>" in out.with_suffix(".html").read_text()


@pytest.mark.parametrize("args", [["one.json"], ["a.json", "b.json", "c.json"], ["missing.json", "missing.json"]])
def test_bad_usage_exits_2_without_a_traceback(tmp_path, args):
    (tmp_path / "one.json").write_text("{}")
    result = runner.invoke(app, ["compare", *[str(tmp_path / a) for a in args]])
    assert result.exit_code == 2 and "Traceback" not in result.output
