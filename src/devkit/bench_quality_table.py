"""The table ``make bench-quality`` writes into docs/benchmarks.md, and the lines of it a
partial run (``BENCH_QUALITY_ONLY``) keeps for the rows it does not measure."""

from __future__ import annotations

import numpy as np


def _spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{np.mean(values):.4f} ± {np.std(values):.4f} (min {min(values):.4f})"


def _model_name(runs: list[dict]) -> str:
    first = runs[0]
    if first["model"] == "auto":
        chosen = sorted({r["chosen"] for r in runs})
        named = " / ".join("CNN" if c == "cnn" else "Lite0" for c in chosen)
        return f"auto: chose {named} ({', '.join(r['chosen'] for r in runs)})"
    name = "EfficientNet-Lite0, ImageNet" if first["pretrained"] else "CNN from scratch"
    if first["pretrained"]:
        name += f" ({first['backbone_size'] or 224} px, {first['backbone_tap']} features)"
    return name


def _few(runs: list[dict]) -> str:
    few = [r["ece_few_test_images"] for r in runs if r.get("ece_few_test_images")]
    if not few:
        return "-"
    return f"{np.mean([f['ece'] for f in few]):.3f} ({np.mean([f['floor'] for f in few]):.3f})"


HEADER = (
    "| row | data set | model | train images | test images | seeds "
    "| accuracy: mean ± sd (min) | macro-F1, mean | ECE, mean (max) "
    "| ECE on 20 test images a class: mean (floor) | training, mean | measured |",
    "|---|---|---|---:|---:|---|---|---:|---:|---:|---:|---|",
)


def _line(runs: list[dict]) -> str:
    first, eces = runs[0], [r["ece"] for r in runs]
    return (
        f"| `{first['name']}` | {first['dataset']} | {_model_name(runs)} | "
        f"{first['train_images']:,} | {first['test_images']:,} | "
        f"{', '.join(str(r['seed']) for r in runs)} | "
        f"{_spread([r['accuracy'] for r in runs])} | "
        f"{np.mean([r['f1_macro'] for r in runs]):.4f} | "
        f"{np.mean(eces):.3f} ({max(eces):.3f}) | {_few(runs)} | "
        f"{np.mean([r['train_seconds'] for r in runs]):.0f} s | "
        f"{first.get('date', '')[:10]} |"
    )


def table(
    results: list[dict], kept: dict[str, str] | None = None, order: tuple[str, ...] = ()
) -> str:
    """The table of docs/benchmarks.md: one line a row (its seeds' mean, spread and least),
    the rows in ``order`` (row names; others after them), with the lines of ``kept`` (row
    name -> line, as the page showed them) for rows this run did not measure."""
    lines = {}
    for name in dict.fromkeys(r["name"] for r in results):
        lines[name] = _line([r for r in results if r["name"] == name])
    for name, line in (kept or {}).items():
        lines.setdefault(name, line)
    order = list(order)
    names = sorted(lines, key=lambda n: order.index(n) if n in order else len(order))
    return "\n".join([*HEADER, *(lines[name] for name in names)])


def shown_rows(text: str, markers: tuple[str, str]) -> dict[str, str]:
    """The table lines between ``markers`` in ``text`` (a page), by row name (the first
    cell): what a partial run keeps for the rows it does not measure. Reports are not
    committed; the page is, so this works on a fresh clone."""
    start, end = markers
    if start not in text or end not in text:
        return {}
    block = text[text.index(start) : text.index(end)]
    found = {}
    for line in block.splitlines():
        cells = [cell.strip() for cell in line.split("|")]
        if len(cells) > 2 and cells[1].startswith("`") and cells[1].endswith("`"):
            found[cells[1].strip("`")] = line
    return found
