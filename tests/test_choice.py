"""``backbone="auto"``: the CNN from scratch or the pretrained backbone, chosen by
cross-validation on the training images, with the evidence written down."""

from __future__ import annotations

import pytest

from imgclf.data import augment, folders
from imgclf.model import choice, efficientnet_lite, network, training

pytestmark = pytest.mark.skipif(
    not (folders.FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)",
)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Few coloured product photos a class (devkit.photoset), 32 px: a user's own folder."""
    from devkit import photoset

    folder = photoset.write(tmp_path_factory.mktemp("photos"), 30, 10, size=48)
    return training.load_dataset(folder, 32, "rgb")


@pytest.mark.slow  # trains the CNN on three folds
def test_few_photos_get_the_pretrained_backbone_with_the_evidence(photos):
    params = network.TrainParams(epochs=20, patience=5)
    made = choice.choose(photos, params, augment.Augmentation(0.05, 0.1, 0.1, False), 1, 64)
    # measured: the backbone about 0.8, the CNN at chance (0.33) on every fold; a margin of
    # more than 0.3 cannot be crossed by a machine's rounding
    assert made.backbone == choice.BACKBONE and made.backbone_weights == "imagenet"
    assert made.tap in efficientnet_lite.TAPS and made.folds == 3 and made.images == 90
    cnn, backbone = made.scores.values()
    assert len(cnn) == len(backbone) == 3
    assert min(backbone) - max(cnn) > 0.3, made.scores
    text = made.describe()
    print(text)
    assert "cross-validation on 90 training images" in text and "CNN from scratch" in text
    assert "ahead by" in text and made.as_dict()["scores"] == made.scores


def test_the_backbone_is_not_tried_where_it_would_take_too_long(photos):
    made = choice.choose(photos, network.TrainParams(), None, 1, 32, budget_s=0.0)
    assert made.backbone == "" and made.backbone_weights == "" and made.scores == {}
    assert "not tried" in made.reason and "over the budget" in made.reason


def test_a_head_only_backbone_calibrates_on_out_of_fold_answers_too(photos):
    """Few held-out photos (23 of 90) are not enough to know a temperature: the linear head's
    answers on the training images, each from a head fitted without it, join them; a head
    that is not that regression (as after fine-tuning) keeps to the held-out images."""
    from imgclf.model import posthoc

    params = network.TrainParams(fine_tune_epochs=0)
    model = network.build_model(
        3,
        photos.input_shape,
        backbone=choice.BACKBONE,
        backbone_weights="imagenet",
        backbone_size=32,
    )
    network.compile_model(model)
    training.fit(model, photos, params, None, 1, verbose=0)
    _, probabilities = training.evaluate(model, photos.test)
    fitted = posthoc.fit(model, photos, params, 1, probabilities).calibration
    _, validation, _ = training.training_indices(photos.train.labels, params, 1)
    assert fitted["held_out"] == len(validation) == 23
    assert fitted["out_of_fold"] == 90 - 23 and fitted["fitted_on"] == 90

    head = model.get_layer(network.HEAD_NAME)
    kernel, bias = head.get_weights()
    head.set_weights([kernel, bias + [0.2, 0.0, 0.0]])  # no longer the fitted regression
    _, probabilities = training.evaluate(model, photos.test)
    fitted = posthoc.fit(model, photos, params, 1, probabilities).calibration
    assert fitted["out_of_fold"] == 0 and fitted["fitted_on"] == fitted["held_out"] == 23
