"""Calibrated probabilities and the "unknown" answer: temperature scaling on known cases, the
detector's threshold, and the served model on digits, photos and noise."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from imgclf.data.preprocessing import decode
from imgclf.model import calibration, novelty, ood, registry
from imgclf.model.prediction import Predictor


def overconfident(n: int, seed: int, temperature: float = 3.0):
    """Labels drawn from calibrated probabilities, reported sharpened by ``temperature``."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (n, 5))
    true = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(5, p=row) for row in true])
    return calibration.scale(true, 1 / temperature), labels


def test_temperature_scaling_undoes_overconfidence_and_keeps_every_answer():
    validation, test = overconfident(3000, 1), overconfident(3000, 2)
    fitted = calibration.calibrate(validation, test)
    # reported with T=1/3: the fit finds about 3 (3,000 images pin it well within 20 %)
    assert 2.4 < fitted["temperature"] < 3.6, fitted["temperature"]
    # (0.0305 after scaling: the ECE of 3,000 images of a calibrated model is itself about 0.03)
    assert fitted["ece"] < 0.035 < 0.1 < fitted["ece_uncalibrated"], fitted
    scaled = calibration.scale(test[0], fitted["temperature"])
    assert (scaled.argmax(1) == test[0].argmax(1)).all()  # the answers do not change
    np.testing.assert_allclose(scaled.sum(1), 1.0, atol=1e-5)
    assert sum(fitted["bins"]["counts"]) == 3000
    # no error to learn from: the temperature stays 1 (the fit would shrink it to its bound)
    right = np.eye(5)[test[1]] * 0.9 + 0.02
    assert calibration.fit_temperature(right, test[1]) == 1.0
    with pytest.raises(ValueError, match="labels"):
        calibration.fit_temperature(test[0], test[1][:10])


def test_few_images_pull_the_temperature_part_of_the_way_from_one():
    # labels drawn from the very probabilities reported: T = 1 is right; 150 held-out images
    # keep the served temperature near it (pure NumPy and SciPy: the same on any CPU)
    served = [
        calibration.fit_temperature(*overconfident(150, seed, temperature=1.0))
        for seed in range(20)
    ]
    assert all(0.75 < t < 1.33 for t in served), served
    # sharpened by 3: the evidence is overwhelming even on 150 images, the prior hardly moves it
    sharp, labels = overconfident(150, 99)
    fitted, p = calibration.temperature_evidence(sharp, labels)
    served = calibration.fit_temperature(sharp, labels)
    assert p < 1e-6 and fitted > 2 and 0.9 * fitted < served < fitted
    # on 18 images the prior pulls more of the way to 1 than on 150
    few = overconfident(18, 3)
    assert 1 < calibration.fit_temperature(*few) < calibration.temperature_evidence(*few)[0]


def test_the_prior_on_the_temperature_beats_the_likelihood_ratio_rule_on_small_sets():
    """The rule it replaced served the best fit only where a likelihood-ratio test preferred it
    to T = 1 (p <= 0.05). Over models under-, well and over-confident (true T 0.8, 1, 1.5, 3),
    40 held-out sets of 45 images each, ECE on 20,000 test images: lower on average with the
    prior (measured with 80 sets: 0.044 against 0.049; 18 images: 0.068 against 0.071; 150:
    0.024 against 0.025), though not on a model already calibrated (0.044 against 0.012),
    which the rule leaves alone. Deterministic NumPy and SciPy: the same on any CPU."""
    by_rule = {"prior": [], "rule": []}
    for temperature in (0.8, 1.0, 1.5, 3.0):
        test = overconfident(20_000, 777, temperature)
        for seed in range(40):
            held = overconfident(45, seed, temperature)
            fitted, p = calibration.temperature_evidence(*held)
            for name, served in (
                ("prior", calibration.fit_temperature(*held)),
                ("rule", fitted if p <= 0.05 else 1.0),
            ):
                scaled = calibration.scale(test[0], served)
                by_rule[name].append(calibration.reliability(scaled, test[1]).ece)
    prior, rule = np.mean(by_rule["prior"]), np.mean(by_rule["rule"])
    print(f"mean ECE: prior {prior:.4f}, likelihood-ratio rule {rule:.4f}")
    assert prior < 0.95 * rule


def test_the_unknown_threshold_holds_its_false_rate_with_confidence_and_flags_far_points():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 4, (4, 8))

    def sample(n):
        labels = rng.integers(0, 4, n)
        return centres[labels] + rng.normal(0, 1, (n, 8)), labels

    features, labels = sample(2000)
    held_out, _ = sample(150)
    detector = novelty.fit(features, labels, held_out, target=0.05)
    # the conservative threshold lets at most 2 of 150 held-out images above it (an upper
    # 95 % bound of 5 % on 150 images), fewer than the plain 95th percentile's 7
    assert (detector.scores(held_out) > detector.threshold).sum() <= 2
    fresh, _ = sample(5000)
    false_rate = detector.unknown(fresh)[0].mean()
    assert false_rate <= 0.05, false_rate  # in expectation about 1.5 %; 5,000 images
    far = rng.normal(0, 1, (200, 8)) + 15  # a cluster away from every class
    unknown, scores = detector.unknown(far)
    assert unknown.all() and (scores > 1).all()
    again = novelty.Novelty.from_bytes(detector.to_bytes())
    np.testing.assert_allclose(again.scores(far), detector.scores(far))
    with pytest.raises(ValueError, match="held-out"):
        novelty.fit(features, labels, held_out[:0])


def test_a_grid_models_detector_averages_the_regions_and_keeps_them_when_saved():
    """A ``grid`` model's features are its regions' rows side by side: the detector measures
    their average (as many features as the ``mid`` model's, not 9 times as many), and a file
    saved before ``regions`` existed reads as one region."""
    rng = np.random.default_rng(3)
    labels = np.repeat([0, 1, 2], 100)
    per_region = rng.normal(0, 1, (300, 3, 8)) + labels[:, None, None] * 3
    held = rng.normal(0, 1, (60, 3, 8)) + np.repeat([0, 1, 2], 20)[:, None, None] * 3
    grid = novelty.fit(per_region.reshape(300, 24), labels, held.reshape(60, 24), regions=3)
    averaged = novelty.fit(per_region.mean(1), labels, held.mean(1))
    assert grid.means.shape == (3, 8) and grid.summary()["regions"] == 3
    probe = rng.normal(0, 1, (10, 3, 8))
    flat = probe.reshape(10, 24)
    np.testing.assert_allclose(grid.scores(flat), averaged.scores(probe.mean(1)))
    again = novelty.Novelty.from_bytes(grid.to_bytes())
    assert again.regions == 3
    np.testing.assert_allclose(again.scores(flat), grid.scores(flat))
    buffer = io.BytesIO()  # the file as saved before regions: three figures
    figures = np.array([averaged.threshold, averaged.target, averaged.held_out])
    np.savez(buffer, means=averaged.means, precision=averaged.precision, figures=figures)
    assert novelty.Novelty.from_bytes(buffer.getvalue()).regions == 1


def test_the_served_digits_model_answers_photos_and_noise_unknown_and_digits_known(
    trained_root,
):
    predictor = Predictor.load(trained_root / "models")
    info = registry.metadata(trained_root / "models", predictor.version)
    assert info["unknown"]["file"] == novelty.FILE and predictor.novelty is not None
    assert info["calibration"]["temperature"] == predictor.temperature
    digits = sorted((trained_root / "data" / "test").rglob("*.png"))
    answered = predictor.classify([path.read_bytes() for path in digits])
    digit_unknown = np.mean([result.prediction.unknown for result in answered])
    photos = predictor.classify(ood.photo_crops())
    photo_unknown = np.mean([result.prediction.unknown for result in photos])
    noise = np.random.default_rng(1).integers(0, 256, (60, 16, 16, 1), dtype=np.uint8)
    noise_unknown = predictor.answers(noise.astype(np.float32) / 255)[1].mean()
    # digits: at most the 5 % target (measured 1.1 %: the threshold is set for an upper
    # bound of 5 %, so about 1.5 % is expected). Photos: this 3-epoch model at 16 px answered
    # 87 % of the crops unknown and all of the noise; 60 % leaves seeds and CPUs room (the
    # issue's 80 % is for the default model, measured by make train: see docs/benchmarks.md)
    assert digit_unknown <= 0.05, digit_unknown
    assert photo_unknown >= 0.6 and noise_unknown >= 0.9, (photo_unknown, noise_unknown)
    result = answered[0].prediction
    assert abs(sum(result.probabilities.values()) - 1) < 1e-4 and result.unknown_score > 0
    shape = decode(ood.photo_crops(1)[0], predictor.image_size, predictor.color_mode).array.shape
    assert shape == (16, 16, 1)


def test_the_evaluate_report_scores_the_unknown_answer_on_offline_sets(trained_root):
    from imgclf.data.preprocessing import decode as read

    predictor = Predictor.load(trained_root / "models")
    digits = sorted((trained_root / "data" / "test").rglob("*.png"))
    test = np.stack([read(p.read_bytes(), (16, 16), "grayscale").array for p in digits])
    found = ood.sets(test, (16, 16), "grayscale", predictor.class_names)
    assert {"noise", "shuffled patches", "photos"} <= set(found)
    assert all(images.shape[1:] == test.shape[1:] for images in found.values())
    rows = {row["set"]: row for row in ood.report(predictor, test, found)}
    # measured: AUROC 0.994 (photos), 1.0 (noise, shuffled tiles), FPR at 95 % recall 0.05
    # (photos); the thresholds leave room for other seeds and CPUs
    assert rows["photos"]["auroc"] >= 0.9 and rows["noise"]["auroc"] >= 0.9, rows
    assert rows["shuffled patches"]["auroc"] > 0.7, rows
    assert rows["photos"]["fpr_at_95_recall"] <= 0.3, rows


def test_heat_maps_lie_on_the_ink_of_digits(trained_root):
    from imgclf.data.preprocessing import decode as read

    predictor = Predictor.load(trained_root / "models")
    digits = sorted((trained_root / "data" / "test").rglob("*.png"))[::6]  # 60 of 360
    images = np.stack([read(p.read_bytes(), (16, 16), "grayscale").array for p in digits])
    classes = predictor.predict_images(images).argmax(axis=1)
    heat = predictor.saliency(images, classes)
    assert heat.shape == (len(digits), 16, 16) and heat.max() == pytest.approx(1.0)
    ink, background = images[..., 0] > 0.5, images[..., 0] < 0.1
    ratios = [
        h[i].mean() / max(h[b].mean(), 1e-6) for h, i, b in zip(heat, ink, background, strict=True)
    ]
    # the issue asks for 1.5 on average; every single image is held to it here
    assert min(ratios) >= 1.5, sorted(ratios)[:5]
    answered = predictor.classify([digits[0].read_bytes()], explain=True)[0].prediction
    picture = Image.open(io.BytesIO(base64.b64decode(answered.saliency)))
    assert picture.size == (16, 16) and picture.mode == "L"
    assert predictor.classify([digits[0].read_bytes()])[0].prediction.saliency is None


def test_the_temperature_comes_with_how_well_its_images_know_it():
    """The 95 % interval covers the true temperature (3) and narrows with more images: a tenth
    of 180 photos (18) leaves it wide, 3,000 pin it within about 15 %."""
    widths = {}
    for n in (18, 60, 3000):
        probabilities, labels = overconfident(n, 5)
        low, high = calibration.temperature_interval(probabilities, labels)
        fitted, _ = calibration.temperature_evidence(probabilities, labels)
        assert low <= fitted <= high and low <= 3.0 <= high, (n, low, fitted, high)
        widths[n] = high / low
    assert widths[3000] < 1.35 < widths[60] < widths[18], widths
    assert calibration.calibrate(*[overconfident(60, s) for s in (1, 2)])["interval"]


def test_the_unknown_threshold_says_what_few_held_out_images_guarantee():
    # the largest of 18 held-out distances: at most 15 % of in-distribution images above it
    # with 95 % confidence (1 - 0.05 ** (1 / 18)); 300 images guarantee a 1 % target
    assert novelty.false_unknown_bound(18, 0.01) == pytest.approx(0.1533, abs=1e-4)
    assert novelty.false_unknown_bound(300, 0.01) == 0.01
    assert novelty.false_unknown_bound(0, 0.01) == 1.0


def test_small_training_sets_hold_out_enough_images_to_calibrate_on():
    from imgclf.model import network, training

    share = training.validation_share
    assert share(1437, 0.1) == 0.1  # the digits: a tenth is already 144 images
    assert share(180, 0.1) == 0.25  # 60 photos a class... 45 held out, not 18
    assert share(400, 0.1) == pytest.approx(0.15)  # 60 images
    assert share(400, 0.3) == 0.3  # never less than asked
    labels = np.repeat(np.arange(3), 60)
    train, validation, _ = training.training_indices(labels, network.TrainParams(), 1)
    assert len(validation) == 45 and not set(train) & set(validation)


def test_the_linear_head_cross_validates_a_rare_class_that_a_sample_would_miss():
    """Over 2,000 training images the head's strength is chosen on a stratified sample, which
    leaves a class of two images out or alone; the sample takes all of it, so the out-of-fold
    answers (the temperature's cross-fitting) have a column for every class."""
    from imgclf.model import taps

    labels = np.r_[np.zeros(3000, int), np.ones(2998, int), [2, 2]]
    features = np.random.default_rng(0).normal(size=(len(labels), 8))
    features[labels == 2] += 3
    for seed in (1, 42):
        head = taps.linear_head(features, labels, False, seed)
        assert np.bincount(labels[head.sample]).tolist()[2] == 2
        assert head.out_of_fold.shape == (len(head.sample), 3)
