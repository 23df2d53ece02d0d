"""``make bench-stats``: /stats costs the same with a million logged predictions as with a
thousand (it reads the latest ``STATS_ROWS`` by the time index), on SQLite.

Writes ``reports/bench-stats-<time>.json`` and prints the medians of 20 calls each.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from imgclf.config import get_settings
from imgclf.files import write_json_atomic
from imgclf.store import Store, migrations

SIZES = (1_000, 100_000, 1_000_000)


def fill(store: Store, count: int, start: float) -> None:
    for first in range(0, count, 50_000):
        rows = [
            {
                "id": uuid.uuid4().hex,
                "created_at": start + n * 0.01,
                "label": str(n % 10),
                "latency_ms": 5.0 + n % 7,
                "model_version": "v0001",
            }
            for n in range(first, min(count, first + 50_000))
        ]
        store.log_predictions(rows)


def main() -> int:
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for size in SIZES:
            url = f"sqlite:///{Path(folder) / f'{size}.db'}"
            migrations.upgrade(url)
            store = Store(url)
            fill(store, size, time.time() - size * 0.01)
            times = []
            for _ in range(20):
                began = time.perf_counter()
                store.statistics()
                times.append((time.perf_counter() - began) * 1000)
            results.append({"rows": size, "median_ms": statistics.median(times)})
            print(
                f"{size:>9,} predictions logged: /stats' query {results[-1]['median_ms']:.1f} ms"
            )
            store.engine.dispose()
    record = {"date": datetime.now(UTC).isoformat(), "results": results}
    reports = get_settings().reports_dir
    reports.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    print("wrote", write_json_atomic(reports / f"bench-stats-{stamp}.json", record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
