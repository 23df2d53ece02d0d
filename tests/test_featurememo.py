"""A frozen backbone's features are computed once per image (``featurememo``): the tap choice's
serve the head's fit and the post-hoc fit, and nothing stale is ever read."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from imgclf.config.readers import ConfigError
from imgclf.model import efficientnet_lite, featurememo, network, posthoc, taps, training

SIZE = 32  # the backbone's input side: small, so that a forward pass is quick


def lite0(tap: str, size: int = SIZE, classes: int = 3):
    return network.build_model(
        classes,
        (24, 24, 3),
        backbone="efficientnet_lite0",
        backbone_weights="imagenet",
        backbone_size=size,
        backbone_tap=tap,
    )


@pytest.fixture
def counted(monkeypatch):
    """The images each backbone pass computed (``featurememo.clear()`` first)."""
    featurememo.clear()
    seen: list[int] = []
    real = network.predict_proba

    def counting(model, images, *args, **kwargs):
        if model.name == "features_of":
            seen.append(len(images))
        return real(model, images, *args, **kwargs)

    monkeypatch.setattr(network, "predict_proba", counting)
    yield seen
    featurememo.clear()


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (40, 24, 24, 3), dtype=np.uint8)


def test_the_all_taps_features_serve_a_mid_model_unchanged(counted, images):
    everything, mid = lite0("all"), lite0("mid")
    first = network.backbone_features(everything, images)
    assert counted == [40]
    reused = network.backbone_features(mid, images[::-1])
    assert counted == [40], "a mid model read what the all model computed"
    direct = network.backbone_features(mid, images[::-1], reuse=False)
    assert reused.shape == direct.shape == (40, first.shape[1] - 1280)
    np.testing.assert_allclose(reused, direct, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(reused, first[::-1, : reused.shape[1]])


def test_only_unseen_images_are_computed_in_the_order_asked(counted, images):
    model = lite0("mid")
    network.backbone_features(model, images[:25])
    mixed = np.concatenate([images[30:], images[:10]])  # 10 unseen, then 10 seen
    got = network.backbone_features(model, mixed)
    assert counted[-1] == 10
    direct = network.backbone_features(model, mixed, reuse=False)
    np.testing.assert_allclose(got, direct, rtol=1e-4, atol=1e-5)


def test_other_weights_or_preprocessing_are_other_features(counted, images):
    everything = lite0("all")
    before = network.backbone_features(everything, images)
    # the final convolution changed: the mid columns still hold, the top ones are computed
    top = everything.get_layer(network.BACKBONE_NAME).get_layer("top")
    top.set_weights([w * 1.5 for w in top.get_weights()])
    network.backbone_features(lite0("mid"), images)
    assert counted == [40]
    after = network.backbone_features(everything, images)
    assert counted == [40, 40]
    np.testing.assert_array_equal(after[:, :-1280], before[:, :-1280])
    assert not np.allclose(after[:, -1280:], before[:, -1280:])
    # a block fine-tuned: a model with it computes again, and gets its own numbers
    tuned = lite0("mid")
    block = tuned.get_layer(network.BACKBONE_NAME).get_layer("block15_project")
    block.set_weights([w * 0.5 for w in block.get_weights()])
    changed = network.backbone_features(tuned, images)
    assert counted == [40, 40, 40]
    assert not np.allclose(changed, before[:, :-1280])
    # resized to another side: another computation
    network.backbone_features(lite0("mid", size=40), images)
    assert counted == [40, 40, 40, 40]


def test_switched_off_or_full_it_computes_and_keeps_within_its_bound(counted, images, monkeypatch):
    model = lite0("mid")
    monkeypatch.setenv("IMGCLF_FEATURE_MEMO", "0")
    network.backbone_features(model, images)
    network.backbone_features(model, images)
    assert counted == [40, 40] and featurememo.kept_bytes() == 0
    monkeypatch.setenv("IMGCLF_FEATURE_MEMO", "off")
    with pytest.raises(ConfigError, match="IMGCLF_FEATURE_MEMO"):
        network.backbone_features(model, images)
    monkeypatch.delenv("IMGCLF_FEATURE_MEMO")
    width = network.backbone_features(model, images[:10]).shape[1]
    row = 4 * width + 2 * featurememo.ROW_OVERHEAD  # mid: two outputs, two entries a row
    assert featurememo.kept_bytes() == 10 * row
    monkeypatch.setattr(featurememo, "MAX_BYTES", 15 * row)
    network.backbone_features(lite0("mid", size=40), images[:10])  # another backbone: the
    assert featurememo.kept_bytes() == 10 * row  # first one's are dropped
    network.backbone_features(model, images[:10])
    assert counted[-1] == 10 and featurememo.kept_bytes() == 10 * row
    assert len(network.backbone_features(model, images)) == 40  # cannot fit: computed, not
    assert counted[-1] == 30 and featurememo.kept_bytes() == 10 * row  # kept
    network.backbone_features(model, images[:10])
    assert counted[-1] == 30, "what was kept still serves"


def test_frozen_statistics_duplicates_none_and_a_cache_file(counted, images, tmp_path):
    model = lite0("mid")
    network.freeze_backbone(model, 0)
    before = network.backbone_features(model, images[:8])
    norm = model.get_layer(network.BACKBONE_NAME).get_layer("block15_project_bn")
    norm.moving_mean.assign(np.asarray(norm.moving_mean) + 1.0)  # not a trainable weight
    after = network.backbone_features(model, images[:8])
    assert counted == [8, 8] and not np.allclose(before, after)
    twice = np.concatenate([images[20:24], images[20:24]])
    got = network.backbone_features(model, twice)
    # kept once each: 8 + 8 (both statistics) + 4
    assert counted[-1] == 8 and featurememo.kept_bytes() == 20 * (
        4 * got.shape[1] + 2 * featurememo.ROW_OVERHEAD
    )
    np.testing.assert_array_equal(got[:4], got[4:])
    assert network.backbone_features(model, images[:0]).shape[0] == 0
    # a memory-mapped file is read by rows, as an array would be
    mapped = np.lib.format.open_memmap(tmp_path / "m.npy", "w+", np.uint8, images.shape)
    mapped[:] = images
    np.testing.assert_array_equal(network.backbone_features(model, mapped)[20:24], got[:4])
    assert counted[-1] == 40 - 8 - 4  # the images seen before are read


def _folder(root, per_class: dict[str, int]) -> None:
    rng = np.random.default_rng(1)
    for split, count in per_class.items():
        for name, tint in (("red", 0), ("green", 1), ("blue", 2)):
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = rng.integers(0, 120, (24, 24, 3), dtype=np.uint8)
                pixels[..., tint] += 120
                Image.fromarray(pixels).save(folder / f"{index}.png")


def test_head_only_training_reads_each_training_image_through_the_backbone_once(
    counted, tmp_path, monkeypatch
):
    """The tap choice computes every training image's features; the head's fit, its
    validation loss and the post-hoc fit read them: no further backbone pass, and the same
    model, temperature and unknown detector as computing each time."""
    _folder(tmp_path, {"train": 20, "test": 5})
    dataset = training.load_dataset(tmp_path, 24, "rgb")
    params = network.TrainParams(fine_tune_epochs=0)

    def train() -> tuple[dict, dict, np.ndarray]:
        chosen = taps.choose_tap(dataset, "efficientnet_lite0", SIZE, "imagenet", 1)
        model = lite0(chosen.tap)
        network.compile_model(model)
        history = training.fit(model, dataset, params, None, 1, verbose=0)
        _, probabilities = training.evaluate(model, dataset.test)
        trusted = posthoc.fit(model, dataset, params, 1, probabilities)
        return history, trusted.metadata(), model.get_layer(network.HEAD_NAME).get_weights()[0]

    history, trust, kernel = train()
    assert counted == [60], "only the tap choice ran the backbone"
    monkeypatch.setenv("IMGCLF_FEATURE_MEMO", "0")
    again, trust_again, kernel_again = train()
    assert sum(counted[1:]) == 60 + 54 + 6 + 54 + 6  # choice, head, validation, post-hoc
    np.testing.assert_allclose(history["val_loss"], again["val_loss"], rtol=1e-4)
    np.testing.assert_allclose(kernel, kernel_again, rtol=1e-3, atol=1e-5)
    calibrated = trust["calibration"], trust_again["calibration"]
    assert calibrated[0]["out_of_fold"] == calibrated[1]["out_of_fold"] > 0
    assert calibrated[0]["temperature"] == pytest.approx(calibrated[1]["temperature"], rel=1e-3)
    unknown = trust["unknown"], trust_again["unknown"]
    assert unknown[0].keys() == unknown[1].keys()


def test_the_surveys_features_serve_a_grid_model_region_by_region(counted, images):
    """The tap choice's survey (every tap, ``grid`` too) in one pass; a ``grid`` model and a
    ``mid`` model then read it, each region under a key of its own, and get what they would
    compute."""
    survey = lite0(efficientnet_lite.SURVEY, size=64)  # 2x2 maps: 4 regions of one cell each
    first = network.backbone_features(survey, images)
    assert counted == [40]
    columns = network.survey_columns(survey)
    for tap in ("grid", "mid"):
        model = lite0(tap, size=64)
        reused = network.backbone_features(model, images)
        assert counted == [40], f"a {tap} model read what the survey computed"
        direct = network.backbone_features(model, images, reuse=False)
        counted.pop()  # the direct pass
        assert reused.shape == direct.shape == first[:, columns[tap]].shape
        np.testing.assert_allclose(reused, direct, rtol=1e-4, atol=1e-5)
    assert first[:, columns["grid"]].shape[1] == 4 * 512
    # the regions differ: a region's key is not the whole map's
    grid = first[:, columns["grid"]].reshape(40, 4, 512)  # region by region
    assert not np.allclose(grid[:, 0], grid[:, 3])


def test_a_grid_model_trains_head_only_and_its_unknown_detector_averages_the_regions(
    counted, tmp_path
):
    """A ``grid`` model (at 64 px: a 2x2 grid of the last two stages' output) through
    training and the post-hoc fit: the head reads 4 x 512 features, the detector their
    average over the regions (512), and the survey's pass is the only one."""
    _folder(tmp_path, {"train": 20, "test": 5})
    dataset = training.load_dataset(tmp_path, 24, "rgb")
    params = network.TrainParams(fine_tune_epochs=0)
    chosen = taps.choose_tap(dataset, "efficientnet_lite0", 64, "imagenet", 1)
    assert set(chosen.scores) == set(efficientnet_lite.TAPS)
    model = lite0("grid", size=64)
    network.compile_model(model)
    training.fit(model, dataset, params, None, 1, verbose=0)
    _, probabilities = training.evaluate(model, dataset.test)
    trusted = posthoc.fit(model, dataset, params, 1, probabilities)
    assert counted == [60], "the survey's features served the grid model"
    assert model.get_layer(network.HEAD_NAME).get_weights()[0].shape == (4 * 512, 3)
    unknown = trusted.metadata()["unknown"]
    assert unknown["regions"] == 4 and unknown["features"] == 512
    features, _ = posthoc.features_and_probabilities(model, dataset.test.images)
    known, scores = trusted.novelty.unknown(features)
    assert scores.shape == (len(dataset.test.images),) and np.isfinite(scores).all()
