"""The four model families of the study, each eating raw 0..255 float32 pixels.

Every model owns its preprocessing as layers (rescaling, resizing, ImageNet mean
subtraction), so the input pipeline, training, evaluation and test-time augmentation
all feed the same raw tensors, and a saved ``.keras`` file is self-contained.

:func:`build_model` is pure: no compile, no I/O apart from reading a weights file
named by ``model_cfg.weights``. The sigmoid output layer is named
:data:`OUTPUT_LAYER` and always computes in float32, so mixed precision never
produces float16 probabilities.

The ResNet50 preprocessing is a small registered layer (:class:`CaffePreprocess`)
rather than a ``Lambda`` because Keras refuses to deserialize lambdas in safe mode;
load saved models with :func:`pcam.artifacts.load_model` (or import :mod:`pcam.models` first).
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import keras
from keras import layers

from pcam import IMAGE_SHAPE, gconv
from pcam.config import MODEL_NAMES, TRANSFER_MODELS, ModelConfig
from pcam.errors import ConfigError, DataError

log = logging.getLogger(__name__)

OUTPUT_LAYER = "prediction"
BASE_LAYER = {"mobilenetv2": "mobilenetv2_base", "resnet50": "resnet50_base"}
MOBILENET_FROZEN_LAYERS = 100
"""Fine-tuning MobileNetV2 trains every base layer but the first 100 (the study's choice)."""
RESNET_TRAINABLE_LAYERS = 124
"""Fine-tuning ResNet50 trains its last 124 layers, BatchNormalization excepted."""
RESNET_DEFAULT_SIZE = 224
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="pcam")
class CaffePreprocess(layers.Layer):
    """``keras.applications.resnet50.preprocess_input`` as a layer: RGB->BGR, minus the ImageNet mean."""

    def call(self, inputs):
        """Flip RGB to BGR and subtract the ImageNet channel means."""
        bgr = keras.ops.flip(inputs, axis=-1)
        mean = keras.ops.convert_to_tensor(CAFFE_MEAN_BGR, dtype=bgr.dtype)
        return bgr - mean


def build_model(name: str, model_cfg: ModelConfig, seed: int = 0) -> keras.Model:
    """Build (not compile) model ``name`` for 96x96x3 raw-pixel inputs."""
    if name not in MODEL_NAMES:
        raise ConfigError(f"unknown model {name!r}; expected one of {', '.join(MODEL_NAMES)}")
    keras.utils.set_random_seed(seed)
    builder = {"logreg": _logreg, "cnn": _cnn, "mobilenetv2": _mobilenetv2, "resnet50": _resnet50}[name]
    return builder(model_cfg)


def _output(x, name: str = OUTPUT_LAYER):
    return layers.Dense(1, activation="sigmoid", dtype="float32", name=name)(x)


def _logreg(cfg: ModelConfig) -> keras.Model:
    """Logistic regression on the 27,648 raw pixels: one sigmoid unit with an L2 penalty."""
    inputs = keras.Input(IMAGE_SHAPE, name="image")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    x = layers.Flatten(name="flatten")(x)
    reg = keras.regularizers.L2(cfg.weight_decay) if cfg.weight_decay > 0 else None
    outputs = layers.Dense(1, activation="sigmoid", dtype="float32", kernel_regularizer=reg, name=OUTPUT_LAYER)(x)
    return keras.Model(inputs, outputs, name="logreg")


def _cnn(cfg: ModelConfig) -> keras.Model:
    """AlexNet-like CNN, 1,640,049 parameters with the study's defaults.

    Five 3x3 conv + BatchNorm + ReLU + 2x2 max-pool blocks (16, 32, 64, 128, 256
    filters: 96 -> 3 pixels), then, as in AlexNet, most parameters sit in the dense
    head (2304 -> 512 -> 128 -> 1, dropout ``cfg.dropout`` after each hidden layer).
    Small kernels and early pooling keep it at ~120 images/s on a 2-core CPU; a
    variant with two convolutions per block was 4x slower for the same head.

    ``cfg.cnn_filters`` sets the blocks; ``cfg.cnn_head: gap`` replaces the dense head
    by global average pooling + dropout + the sigmoid unit (fewer parameters to
    overfit 20,000 patches, the same cost per image in the conv layers). ``cfg.cnn_crop``
    crops the centre inside the model, so every caller (evaluate, predict, serve) still
    feeds whole 96-px patches. ``cfg.cnn_pool_first`` pools right after each convolution,
    so BatchNorm and ReLU see a quarter of the pixels (1.5x faster, same weights).
    ``cfg.cnn_group: p4m`` makes the blocks P4M group convolutions (:mod:`pcam.gconv`) and
    the head orientation-pooled and globally averaged before its dense layers, so the model
    is invariant to flips and quarter turns.
    """
    inputs = keras.Input(IMAGE_SHAPE, name="image")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    if cfg.cnn_crop:
        x = layers.CenterCrop(cfg.cnn_crop, cfg.cnn_crop, name="center_crop")(x)
    p4m = cfg.cnn_group == "p4m"
    for i, filters in enumerate(cfg.cnn_filters, start=1):
        if p4m:
            x = gconv.P4MConv2D(filters, 3, lifting=i == 1, name=f"conv{i}")(x)
            norm = gconv.GroupBatchNorm(momentum=cfg.bn_momentum, name=f"bn{i}")
        else:
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
            norm = layers.BatchNormalization(momentum=cfg.bn_momentum, name=f"bn{i}")
        if cfg.cnn_pool_first:
            x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(norm(x))
        if not cfg.cnn_pool_first:
            x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    if p4m:  # invariant features: the strongest orientation of each filter, averaged over positions
        x = gconv.OrientationPool(name="orientation_pool")(x)
        x = layers.GlobalAveragePooling2D(name="gap")(x)
    elif cfg.cnn_head == "gap":
        x = layers.GlobalAveragePooling2D(name="gap")(x)
    else:
        x = layers.Flatten(name="flatten")(x)
    if cfg.cnn_head == "gap":
        x = layers.Dropout(cfg.dropout, name="dropout")(x)
        return keras.Model(inputs, _output(x), name="cnn")
    for i, units in enumerate((512, 128), start=1):
        x = layers.Dense(units, activation="relu", name=f"fc{i}")(x)
        x = layers.Dropout(cfg.dropout, name=f"dropout{i}")(x)
    return keras.Model(inputs, _output(x), name="cnn")


def _mobilenetv2(cfg: ModelConfig) -> keras.Model:
    size = cfg.image_size or IMAGE_SHAPE[0]
    inputs = keras.Input(IMAGE_SHAPE, name="image")
    x = inputs
    if size != IMAGE_SHAPE[0]:
        x = layers.Resizing(size, size, name="resize")(x)
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")(x)  # mobilenet_v2.preprocess_input
    x = _pooled_base(keras.applications.MobileNetV2, "mobilenetv2", x, size, cfg)
    return keras.Model(inputs, _output(x), name="mobilenetv2")


def _resnet50(cfg: ModelConfig) -> keras.Model:
    size = cfg.image_size or RESNET_DEFAULT_SIZE
    inputs = keras.Input(IMAGE_SHAPE, name="image")
    x = inputs
    if size != IMAGE_SHAPE[0]:
        x = layers.Resizing(size, size, name="resize")(x)
    x = CaffePreprocess(name="preprocess")(x)
    x = _pooled_base(keras.applications.ResNet50, "resnet50", x, size, cfg)
    x = layers.BatchNormalization(name="head_bn")(x)
    return keras.Model(inputs, _output(x), name="resnet50")


def _pooled_base(application: Any, name: str, x: Any, size: int, cfg: ModelConfig) -> Any:
    """The Keras application's convolutional base (weights per ``cfg.weights``) on ``x``, pooled, then dropout."""
    base = application(input_shape=(size, size, 3), include_top=False, weights=_keras_weights(cfg.weights))
    base = _rename(base, BASE_LAYER[name])
    _load_base_weights(base, cfg.weights, name)
    x = _call_base(base, x, cfg)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return layers.Dropout(cfg.dropout, name="dropout")(x)


def is_pretrained(cfg: ModelConfig) -> bool:
    """Whether the base starts from learned weights (imagenet or a weights file)."""
    return cfg.weights not in ("none", "")


def _call_base(base: keras.Model, x, cfg: ModelConfig):
    """Wire the base network in; frozen (and BatchNorm in inference mode) when pretrained.

    A pretrained base runs with ``training=False`` so its ImageNet BatchNorm statistics
    are never overwritten by small batches. A base with ``weights: none`` has nothing to
    protect: it trains from scratch, its BatchNorm layers learn their statistics, with
    ``cfg.bn_momentum`` (MobileNetV2's own 0.999 needs thousands of steps before the
    moving statistics forget their initial values).
    """
    base.trainable = False
    if is_pretrained(cfg):
        return base(x, training=False)
    for layer in base.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = cfg.bn_momentum
    return base(x)


def _rename(base: keras.Model, name: str) -> keras.Model:
    base.name = name
    return base


def _keras_weights(weights: str) -> str | None:
    """What keras.applications gets: ``imagenet`` (downloads) or None (files are loaded after)."""
    return "imagenet" if weights == "imagenet" else None


def _load_base_weights(base: keras.Model, weights: str, model_name: str) -> None:
    """Load a local or gs:// weights file into the base network; wrong files fail clearly."""
    if weights in ("imagenet", "none", ""):
        return
    local, tmp = _local_copy(weights)
    try:
        # A file of another architecture makes Keras warn once per layer before it raises;
        # hold the warnings so the one error below is what the user reads.
        with warnings.catch_warnings(record=True) as held:
            warnings.simplefilter("always")
            base.load_weights(str(local))
    except (ValueError, KeyError, OSError, TypeError) as exc:
        # Keras' message goes on to print every mismatched weight array: keep its first line.
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise ConfigError(
            f"weights file {weights!r} does not fit the {model_name} base network "
            f"(saved from another architecture or corrupt): {first}"
        ) from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    for warning in held:
        log.warning("%s: %s", weights, warning.message)
    log.info("loaded %s base weights from %s", model_name, weights)


def _local_copy(uri: str) -> tuple[Path, Path | None]:
    """A local path for ``uri``; gs:// files are copied (pcam.storage) to a temp file that keeps the suffix."""
    from pcam import storage

    if storage.is_gcs(uri):
        suffix = ".weights.h5" if uri.endswith(".weights.h5") else Path(uri).suffix
        fd, name = tempfile.mkstemp(suffix=suffix)
        os.close(fd)
        tmp = Path(name)
        try:
            storage.download_file(uri, tmp)
        except DataError as exc:
            tmp.unlink(missing_ok=True)
            raise ConfigError(f"weights file {exc}") from None
        return tmp, tmp
    path = Path(uri).expanduser()
    if not path.is_file():
        raise ConfigError(f"weights file {uri!r} does not exist")
    return path, None


def base_network(model: keras.Model, name: str) -> keras.Model:
    """The pretrained base inside a transfer model."""
    if name not in TRANSFER_MODELS:
        raise ConfigError(f"model {name!r} has no pretrained base; only {', '.join(TRANSFER_MODELS)} do")
    return model.get_layer(BASE_LAYER[name])


def set_trainable_for_stage(model: keras.Model, name: str, stage: str, *, pretrained: bool = True) -> None:
    """Freeze/unfreeze layers for ``stage`` ("train" or "finetune").

    ``train``: transfer models train their head only (the base is frozen) when
    ``pretrained``, and everything otherwise; logreg and cnn train everything.
    ``finetune``: MobileNetV2 trains all base layers but the first 100; ResNet50 trains
    its last 124 base layers except BatchNormalization, whose moving statistics from
    ImageNet would otherwise be overwritten by small batches. The caller must (re)compile afterwards.
    """
    if stage not in ("train", "finetune"):
        raise ConfigError(f"unknown stage {stage!r}; expected train or finetune")
    if name not in TRANSFER_MODELS:
        if stage == "finetune":
            raise ConfigError(f"model {name!r} cannot be fine-tuned; only {', '.join(TRANSFER_MODELS)} can")
        model.trainable = True
        return
    model.trainable = True
    base = base_network(model, name)
    if stage == "train":
        # Without pretrained weights there is nothing to transfer: train the whole network.
        base.trainable = not pretrained
        return
    base.trainable = True
    if name == "mobilenetv2":
        for layer in base.layers[:MOBILENET_FROZEN_LAYERS]:
            layer.trainable = False
    else:
        cut = len(base.layers) - RESNET_TRAINABLE_LAYERS
        for i, layer in enumerate(base.layers):
            layer.trainable = i >= cut and not isinstance(layer, layers.BatchNormalization)
