"""``make bench-trust``: what the unknown answer and explanations cost a prediction, in process.

For each model given (default: the current one), on batches of 1 and 16 test-sized images, the
time of one call of:

- ``probabilities only``: the forward pass as /predict ran it before calibration and the
  unknown answer existed (the model's probabilities, jitted);
- ``served``: what /predict runs now: one forward pass that also returns the pooled features,
  the temperature (set to 0.5 where the model's is 1, which skips it, so that its cost is in
  the figure), and the Mahalanobis unknown score (``Predictor.answers``);
- ``explain``: ``served`` plus the heat maps (``?explain=true``: one backward pass more).

The three run interleaved, in a new random order each round, ``ROUNDS`` rounds after a warm-up
(compilation); the table gives the medians and the median of the per-round ratios to
``probabilities only`` (these machines are noisy). Writes ``reports/bench-trust-<time>.json``.

    python -m devkit.bench_trust [--models-dir DIR ...] [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from imgclf.config import get_settings
from imgclf.files import write_json_atomic
from imgclf.model.prediction import Predictor, _compiled_forward

ROUNDS = 60
BATCHES = (1, 16)


def _variants(predictor: Predictor) -> dict:
    import jax.numpy as jnp

    model = predictor.model
    forward = _compiled_forward(model)
    trainable = [jnp.array(v.value) for v in model.trainable_variables]
    non_trainable = [jnp.array(v.value) for v in model.non_trainable_variables]

    def before(images):
        return np.asarray(forward(trainable, non_trainable, images).block_until_ready())

    def explain(images):
        probabilities = predictor.answers(images)[0]
        return predictor.saliency(images, probabilities.argmax(axis=1))

    return {"probabilities only": before, "served": predictor.answers, "explain": explain}


def measure(predictor: Predictor, batch: int, rounds: int, seed: int = 0) -> dict:
    """Median milliseconds per call of each variant, and median per-round ratios."""
    rng = np.random.default_rng(seed)
    channels = 1 if predictor.color_mode == "grayscale" else 3
    images = rng.random((batch, *predictor.image_size, channels), dtype=np.float32)
    variants = _variants(predictor)
    for run in variants.values():
        run(images)  # compile
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name in rng.permutation(list(variants)):
            started = time.perf_counter()
            variants[name](images)
            times[name].append((time.perf_counter() - started) * 1000)
    base = np.array(times["probabilities only"])
    return {
        name: {
            "median_ms": round(statistics.median(values), 3),
            "ratio_to_probabilities_only": round(float(np.median(np.array(values) / base)), 3),
        }
        for name, values in times.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, action="append")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args(argv)
    settings = get_settings()
    results = []
    for models_dir in args.models_dir or [settings.models_dir]:
        predictor = Predictor.load(models_dir)
        if predictor.temperature == 1.0:  # T = 1 skips the scaling: measure it all the same
            predictor.temperature = 0.5
        features = predictor._with_features.outputs[0].shape[-1]
        for batch in BATCHES:
            found = measure(predictor, batch, args.rounds)
            results.append(
                {
                    "model": f"{models_dir} {predictor.version}",
                    "backbone": predictor.metadata.get("parameters", {}).get("backbone") or "cnn",
                    "image_size": list(predictor.image_size),
                    "features": int(features),
                    "batch": batch,
                    **found,
                }
            )
            row = results[-1]
            print(
                f"{row['backbone']:>20} {row['image_size'][0]:>4}px batch {batch:>2}: "
                + "  ".join(
                    f"{name} {found[name]['median_ms']:.2f} ms "
                    f"(x{found[name]['ratio_to_probabilities_only']:.2f})"
                    for name in found
                ),
                flush=True,
            )
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    record = {
        "created_at": stamp,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "rounds": args.rounds,
        "results": results,
    }
    path = write_json_atomic(settings.reports_dir / f"bench-trust-{stamp}.json", record)
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
