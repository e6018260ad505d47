"""A bounded worst case: grouping that does not blow up, a cap on marks, a time budget per image
in `digits predict` and the server, and the adversarial set (tests/adversarial.py) answered
without ever needing the budget. Its speed is a benchmark (`make bench`), not asserted here."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adversarial import ADVERSARIAL
from digits.decode import ImageError, load_image
from digits.grouping import MAX_CANDIDATES, Group, TooCluttered, candidates, group
from digits.locate import TooSlow, locate
from digits.preprocess import found_in, preprocess_all

PHOTOS = Path(__file__).parent / "data" / "photos"


def _boxes(groups):
    return sorted((g.x0, g.y0, g.x1, g.y1) for g in groups)


def test_strokes_stacked_in_a_column_are_one_digit_and_neighbours_are_not():
    five_bar, five_body = Group(100, 40, 130, 48, 200, [1]), Group(98, 52, 132, 100, 900, [2])
    one_top, one_foot = Group(200, 40, 212, 70, 300, [3]), Group(201, 74, 213, 110, 350, [4])  # a broken stroke
    seven = Group(230, 40, 262, 110, 400, [5])  # beside the 1, not above it
    got = group([five_bar, five_body, one_top, one_foot, seven])
    assert _boxes(got) == [(98, 40, 132, 100), (200, 40, 213, 110), (230, 40, 262, 110)]
    assert [g.area for g in got] == [1100, 650, 400]  # largest first, areas summed


def test_a_chain_merges_through_its_grown_box():
    # c overlaps a only once a and b are one box (b widens it): the greedy scan merged them, so does this
    a, b, c = Group(0, 0, 20, 30, 300, [1]), Group(0, 32, 40, 60, 400, [2]), Group(25, 62, 40, 90, 200, [3])
    assert _boxes(group([a, b, c])) == [(0, 0, 40, 90)]


def test_grouping_a_grid_of_hundreds_of_blocks_is_quick():
    # 9x12 blocks every 16 px across and 17 px down (a gap under half their height): the greedy
    # scan restarted after every one of the 870 merges, O(n^3); a 5 KB PNG like it took 25 s
    blocks = [Group(x, y, x + 9, y + 12, 108, [k]) for k, (x, y) in
              enumerate((x, y) for y in range(4, 508, 17) for x in range(4, 508, 16))]
    got = group(blocks)
    assert len(got) == 32 and all(g.h > 490 and g.area == 30 * 108 for g in got)  # each column one group


def test_more_marks_than_handwriting_has_is_too_cluttered():
    mask = np.zeros((512, 512), np.uint8)
    for y in range(2, 510, 12):  # 42 x 42 separate 11x11 marks, each passing the speck filter
        for x in range(2, 510, 12):
            mask[y:y + 11, x:x + 11] = 255
    with pytest.raises(TooCluttered, match=f"more than a photo of handwriting has: {MAX_CANDIDATES:,}"):
        candidates(mask)


def test_the_search_gives_up_past_its_deadline():
    gray, _ = load_image(ADVERSARIAL["block_grid"]())
    with pytest.raises(TooSlow, match="took too long"):
        locate(gray, deadline=time.monotonic() - 1)
    assert locate(gray, deadline=time.monotonic() + 60).boxes  # with time to spare it answers


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_an_adversarial_image_is_answered_well_within_the_budget(name):
    gray, rgb = load_image(ADVERSARIAL[name]())
    try:  # half the default budget: what `make bench` times is far under it
        found_in(*preprocess_all(gray, rgb, deadline=time.monotonic() + 1.0))
    except TooSlow:
        pytest.fail(f"{name} needed more than half the default time budget")
    except ImageError as e:  # "blank", "too cluttered": an answer too
        assert str(e)


def test_predict_reports_an_image_over_its_budget_and_goes_on(trained, tmp_path):
    from digits.predict import predict_files

    (tmp_path / "grid.png").write_bytes(ADVERSARIAL["block_grid"]())
    entry = json.loads((PHOTOS / "photos.json").read_text())["photos"][0]
    (tmp_path / "photo.jpg").write_bytes((PHOTOS / entry["file"]).read_bytes())
    got = {Path(r["path"]).name: r for r in predict_files([tmp_path], backend="eager", checkpoint=trained,
                                                          artifacts=trained, time_budget_s=1e-4)}
    assert "took too long" in got["grid.png"]["error"] and "took too long" in got["photo.jpg"]["error"]
    got = {Path(r["path"]).name: r for r in predict_files([tmp_path], backend="eager", checkpoint=trained,
                                                          artifacts=trained)}
    assert "error" not in got["photo.jpg"] and "error" not in got["grid.png"]


def test_the_server_answers_422_past_the_budget_and_frees_the_decode_slot(served):
    from fastapi.testclient import TestClient

    from digits.serve import ServeConfig, create_app

    cfg = ServeConfig(artifacts=served, models=["lenet5"], decode_concurrency=1, image_budget_s=1e-4)
    body = ADVERSARIAL["block_grid"]()
    with TestClient(create_app(cfg)) as client:
        for _ in range(3):  # one slot: were it held, the second request would wait for ever
            r = client.post("/v1/predict", content=body, headers={"Content-Type": "image/png"})
            assert r.status_code == 422 and "took too long" in r.json()["error"]
        assert client.post("/v1/predict?model=lenet5", json={"image": np.zeros((28, 28)).tolist()}).status_code == 200


# --------------------------------------------------------------------------- benchmarks (make bench)
def _ordinary_photos(n: int) -> list[bytes]:
    index = json.loads((PHOTOS / "photos.json").read_text())["photos"]
    return [(PHOTOS / p["file"]).read_bytes() for p in index[:n]]


def _read_all(bodies: list[bytes]) -> int:
    n = 0
    for body in bodies:
        try:
            n += len(found_in(*preprocess_all(*load_image(body))).digits)
        except ImageError:
            pass
    return n


@pytest.mark.benchmark(group="worst case")
@pytest.mark.parametrize("name", ADVERSARIAL)  # which is the worst changes with the steps (graph paper, since the thin-pen work)
def test_bench_each_adversarial_image(benchmark, name):
    benchmark(_read_all, [ADVERSARIAL[name]()])


@pytest.mark.benchmark(group="worst case")
def test_bench_the_whole_adversarial_set(benchmark):
    benchmark(_read_all, [make() for make in ADVERSARIAL.values()])


@pytest.mark.benchmark(group="worst case")
def test_bench_as_many_ordinary_photos(benchmark):
    benchmark(_read_all, _ordinary_photos(len(ADVERSARIAL)))


def test_an_image_of_each_adversarial_kind_is_a_small_file():
    sizes = {name: len(make()) for name, make in ADVERSARIAL.items()}
    assert sizes["block_grid"] < 5_000 and all(s < 300_000 for s in sizes.values())  # cheap to send, not to read
    assert Image.open(io.BytesIO(ADVERSARIAL["block_grid"]())).size == (512, 512)
