"""Models: exact sizes, structure, freeze/unfreeze sets, one real training step each."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pcam.artifacts import load_model
from pcam.config import ModelConfig
from pcam.errors import ConfigError
from pcam.models import (
    OUTPUT_LAYER,
    _load_base_weights,
    base_network,
    build_model,
    set_trainable_for_stage,
)
from pcam.train import compile_model
from tests.unit._train_helpers import load_real


@pytest.fixture(scope="module")
def real_batch(pcam_sample):
    return load_real(pcam_sample, per_class=4)


def _one_step(model, cfg, x, y, eager=False):
    compile_model(model, cfg)
    model.run_eagerly = eager  # tracing a 175-layer graph costs far more than one eager step
    before = [v.numpy().copy() for v in model.trainable_variables]
    logs = model.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"])
    changed = [not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables, strict=True)]
    assert any(changed), "a training step changed no weight"
    prob = model.predict(x, verbose=0)
    assert prob.shape == (len(x), 1) and prob.dtype == np.float32
    assert ((prob >= 0) & (prob <= 1)).all()


def test_logreg_is_27649_parameters_with_l2_and_trains(real_batch):
    cfg = ModelConfig(optimizer="sgd", weight_decay=1e-4)
    model = build_model("logreg", cfg)
    assert model.count_params() == 96 * 96 * 3 + 1 == 27_649
    dense = model.get_layer(OUTPUT_LAYER)
    assert dense.kernel_regularizer.get_config()["l2"] == pytest.approx(1e-4)
    _one_step(model, cfg, *real_batch)
    assert isinstance(model.optimizer, keras.optimizers.SGD)


def test_cnn_exact_parameter_count_and_trains(real_batch):
    cfg = ModelConfig(dropout=0.3)
    model = build_model("cnn", cfg)
    assert model.count_params() == 1_640_049
    assert [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)] == [0.3, 0.3]
    assert all(layer.kernel_size == (3, 3) for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    _one_step(model, cfg, *real_batch)


def test_cnn_gap_head_and_filters_are_configurable_and_train(real_batch):
    cfg = ModelConfig(cnn_head="gap", cnn_filters=(8, 16, 32), dropout=0.2, label_smoothing=0.1)
    model = build_model("cnn", cfg)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [8, 16, 32]
    assert model.get_layer("gap") is not None and not any(isinstance(la, keras.layers.Flatten) for la in model.layers)
    # convs (no bias) + BatchNorm (4 per channel) + one sigmoid unit on 32 pooled features
    assert model.count_params() == (27 * 8 + 72 * 16 + 144 * 32) + 4 * (8 + 16 + 32) + 33
    _one_step(model, cfg, *real_batch)
    assert model.loss.get_config()["label_smoothing"] == pytest.approx(0.1)


def test_cnn_centre_crop_sees_only_the_centre_and_trains(real_batch):
    cfg = ModelConfig(cnn_crop=64)
    model = build_model("cnn", cfg)
    assert model.input_shape == (None, 96, 96, 3) and model.get_layer("fc1").input.shape[-1] == 2 * 2 * 256
    images = real_batch[0][:4].astype(np.float32)
    border = images.copy()
    border[:, :16] = 0
    border[:, -16:] = 255
    border[:, :, :16] = 255
    before = model.predict(images, verbose=0)
    np.testing.assert_allclose(model.predict(border, verbose=0), before, atol=1e-6)  # the border is cropped away
    inner = images.copy()
    inner[:, 40:56, 40:56] = 255 - inner[:, 40:56, 40:56]
    assert np.abs(model.predict(inner, verbose=0) - before).max() > 0  # the centre is seen
    _one_step(model, cfg, *real_batch)


def test_cnn_pool_first_computes_the_same_function_with_the_same_weights(real_batch):
    # max-pool commutes with ReLU and with BatchNorm's per-channel affine map while its scale
    # is positive, so at inference the reordered blocks give the study's CNN's answers.
    study = build_model("cnn", ModelConfig(), seed=1)
    cfg = ModelConfig(cnn_pool_first=True)
    fast = build_model("cnn", cfg, seed=2)
    assert [w.shape for w in fast.weights] == [w.shape for w in study.weights]
    fast.set_weights(study.get_weights())
    images = real_batch[0][:8].astype(np.float32)
    np.testing.assert_allclose(fast.predict(images, verbose=0), study.predict(images, verbose=0), atol=1e-5)
    gamma, beta, mean, var = fast.get_layer("bn2").get_weights()
    fast.get_layer("bn2").set_weights([-gamma, beta, mean, var])  # a negative scale: max and min swap
    study.get_layer("bn2").set_weights([-gamma, beta, mean, var])
    assert np.abs(fast.predict(images, verbose=0) - study.predict(images, verbose=0)).max() > 1e-4
    _one_step(fast, cfg, *real_batch)


def test_same_seed_same_weights():
    a = build_model("cnn", ModelConfig(), seed=3).get_weights()
    b = build_model("cnn", ModelConfig(), seed=3).get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_output_stays_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_model("cnn", ModelConfig())
        assert model.get_layer("conv1").compute_dtype == "float16"
        assert model.get_layer(OUTPUT_LAYER).compute_dtype == "float32"
        assert model.output.dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_mobilenetv2_structure_stages_and_step(real_batch):
    cfg = ModelConfig(weights="none")
    model = build_model("mobilenetv2", cfg)
    base = base_network(model, "mobilenetv2")
    assert base.input_shape == (None, 96, 96, 3) and len(base.layers) == 154
    head = [type(layer).__name__ for layer in model.layers[model.layers.index(base) + 1 :]]
    assert head == ["GlobalAveragePooling2D", "Dropout", "Dense"]
    # preprocessing maps 0..255 to -1..1
    pre = model.get_layer("preprocess")
    np.testing.assert_allclose(pre(np.array([[0.0, 127.5, 255.0]])).numpy(), [[-1, 0, 1]], atol=1e-6)
    # stage 1: base frozen, only the sigmoid unit trains
    set_trainable_for_stage(model, "mobilenetv2", "train")
    assert [v.path for v in model.trainable_variables] == [f"{OUTPUT_LAYER}/kernel", f"{OUTPUT_LAYER}/bias"]
    # stage 2: all base layers but the first 100
    set_trainable_for_stage(model, "mobilenetv2", "finetune")
    assert [layer.trainable for layer in base.layers] == [False] * 100 + [True] * 54
    _one_step(model, cfg, *real_batch, eager=True)


@pytest.fixture(scope="module")
def resnet():
    return build_model("resnet50", ModelConfig(weights="none", image_size=32))


def test_resnet50_structure_finetune_keeps_batchnorm_frozen(resnet, real_batch):
    model = resnet
    assert model.get_layer("resize").get_config()["height"] == 32
    base = base_network(model, "resnet50")
    assert len(base.layers) == 175
    assert isinstance(model.layers[-2], keras.layers.BatchNormalization)
    assert any(isinstance(layer, keras.layers.Dropout) for layer in model.layers)
    set_trainable_for_stage(model, "resnet50", "train")
    assert not base.trainable
    assert len(model.trainable_variables) == 4  # head BatchNorm gamma/beta + dense kernel/bias
    set_trainable_for_stage(model, "resnet50", "finetune")
    is_bn = [isinstance(layer, keras.layers.BatchNormalization) for layer in base.layers]
    assert not any(layer.trainable for layer in base.layers[:-124])
    assert [layer.trainable for layer in base.layers[-124:]] == [not b for b in is_bn[-124:]]
    assert sum(layer.trainable for layer in base.layers) == 86  # 124 minus 38 BatchNorm layers
    assert not any(layer.trainable for layer, b in zip(base.layers, is_bn, strict=True) if b)
    _one_step(model, ModelConfig(), *real_batch, eager=True)


def test_resnet50_preprocessing_matches_keras_and_survives_save(resnet, tmp_path):
    x = np.random.default_rng(0).uniform(0, 255, (2, 96, 96, 3)).astype(np.float32)
    ours = resnet.get_layer("preprocess")(x).numpy()
    theirs = keras.applications.resnet50.preprocess_input(x.copy())
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    # the custom layer round-trips through a .keras file (safe mode refuses lambdas)
    inputs = keras.Input((96, 96, 3))
    small = keras.Model(inputs, resnet.get_layer("preprocess").__class__(name="preprocess")(inputs))
    small.save(tmp_path / "m.keras")
    again = load_model(tmp_path / "m.keras", compile=False)
    np.testing.assert_allclose(again(x), theirs, atol=1e-4)


def test_weights_file_loads_into_same_architecture_only(resnet, tmp_path):
    donor = build_model("mobilenetv2", ModelConfig(weights="none"), seed=7)
    path = tmp_path / "mnv2_base.weights.h5"
    base_network(donor, "mobilenetv2").save_weights(path)
    ok = build_model("mobilenetv2", ModelConfig(weights=str(path)), seed=8)
    got, want = base_network(ok, "mobilenetv2").get_weights(), base_network(donor, "mobilenetv2").get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
    # MobileNetV2 base weights into the ResNet50 base (the loader build_model uses)
    with pytest.raises(ConfigError) as err:
        _load_base_weights(base_network(resnet, "resnet50"), str(path), "resnet50")
    assert str(path) in str(err.value) and "resnet50" in str(err.value)
    with pytest.raises(ConfigError, match="does not exist"):
        build_model("mobilenetv2", ModelConfig(weights=str(tmp_path / "missing.weights.h5")))


def test_unknown_model_and_finetuning_a_non_transfer_model_fail_clearly():
    with pytest.raises(ConfigError, match="'vgg16'"):
        build_model("vgg16", ModelConfig())
    with pytest.raises(ConfigError, match="'cnn'"):
        set_trainable_for_stage(build_model("logreg", ModelConfig()), "cnn", "finetune")


def test_transfer_model_without_pretrained_weights_trains_from_scratch(real_batch):
    """weights: none leaves nothing to transfer: stage 1 trains the base, BatchNorm learns fast."""
    cfg = ModelConfig(weights="none", bn_momentum=0.8)
    model = build_model("mobilenetv2", cfg)
    base = base_network(model, "mobilenetv2")
    set_trainable_for_stage(model, "mobilenetv2", "train", pretrained=False)
    assert base.trainable and len(model.trainable_variables) > 100
    momenta = {layer.momentum for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)}
    assert momenta == {0.8}
    before = [v.numpy().copy() for v in base.trainable_variables[:3]]
    _one_step(model, cfg, *real_batch, eager=True)
    assert any(not np.array_equal(b, v.numpy()) for b, v in zip(before, base.trainable_variables[:3], strict=True))
