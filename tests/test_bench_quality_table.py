"""The quality bench's table: a partial run (``BENCH_QUALITY_ONLY``) replaces its own rows and
keeps the others as the committed page shows them, so that a fresh clone (no earlier reports)
does not drop rows from docs/benchmarks.md."""

from __future__ import annotations

from devkit import bench_quality
from devkit.bench_quality_table import HEADER, shown_rows, table
from devkit.bench_train import BENCHMARKS


def _result(name: str, seed: int, accuracy: float) -> dict:
    return {
        "name": name,
        "seed": seed,
        "dataset": "fashion_mnist",
        "model": "efficientnet_lite0",
        "chosen": "efficientnet_lite0",
        "pretrained": True,
        "backbone_size": 224,
        "backbone_tap": "mid",
        "train_images": 1000,
        "test_images": 2000,
        "accuracy": accuracy,
        "f1_macro": accuracy,
        "ece": 0.02,
        "train_seconds": 300.0,
        "date": "2026-12-06T21:00:00+00:00",
    }


def test_the_committed_table_names_every_short_row():
    shown = shown_rows(BENCHMARKS.read_text(), bench_quality.MARKERS)
    short = [row.name for row in bench_quality.ROWS if row.name not in bench_quality.LONG]
    assert set(shown) <= set(short)
    assert {"digits-auto", "fashion-lite0-1k", "photos-auto"} <= set(shown)
    assert HEADER[0] in BENCHMARKS.read_text()


def test_a_partial_run_keeps_the_other_rows_in_order():
    page = "\n".join(
        [
            bench_quality.MARKERS[0],
            "caption",
            *HEADER,
            "| `photos-auto` | photos | auto | 180 | 600 | 1 | 0.85 | 0.85 | 0.03 | - | 1 s | x |",
            "| `fashion-lite0-1k` | old line |",
            "| `digits-auto` | digits | auto | 1 | 1 | 1 | 0.99 | 0.99 | 0.01 | - | 1 s | x |",
            bench_quality.MARKERS[1],
        ]
    )
    kept = {
        name: line
        for name, line in shown_rows(page, bench_quality.MARKERS).items()
        if name != "fashion-lite0-1k"
    }
    runs = [_result("fashion-lite0-1k", seed, acc) for seed, acc in ((1, 0.88), (2, 0.87))]
    text = table(runs, kept, tuple(row.name for row in bench_quality.ROWS))
    lines = text.splitlines()
    assert lines[:2] == list(HEADER)
    assert [line.split("|")[1].strip() for line in lines[2:]] == [
        "`digits-auto`",
        "`fashion-lite0-1k`",
        "`photos-auto`",
    ]
    assert "old line" not in text
    new = lines[3]
    assert "0.8750 ± 0.0050 (min 0.8700)" in new and "| 1, 2 |" in new
    assert new.endswith("| 2026-12-06 |")
