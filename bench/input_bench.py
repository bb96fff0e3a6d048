"""Bench 2: the training input pipeline vs decode-only vs each model's train-step consumption.

* pipeline: ``pcam.input.make_dataset(training=True, augment_cfg=AugmentConfig())``,
  one full pass (read interleaved, shuffle, batch, parse + decode, flips/rot90/noise);
* decode-only: ``make_dataset(training=False)`` (read, parse, decode; no shuffle or augment);
* consumption: images/s of ``model.fit`` on one in-memory batch repeated (no input
  cost at all), stage-1 trainable settings and the same compile as ``pcam train``.

Goal: the pipeline feeds at least 3x what the fastest model eats, on the same cores.

Also the wait at an epoch's end: ``fit`` once per epoch on a fresh training pipeline, as
:mod:`pcam.fit` does, and the seconds from Keras' ``on_train_end`` to ``fit`` returning,
when Keras drops the epoch's iterator. With tf.data's autotune thread on (TensorFlow's
default) the drop waits for that thread's sleep; ``make_dataset`` turns it off
(:func:`pcam.input._without_autotune_thread`).
"""

from __future__ import annotations

import time

from bench.common import Figure, best_of, fit_rate, loadavg, main, quiet_tf, real_shards

GOAL = 3.0
BATCH = 64
MODELS = ("logreg", "cnn", "mobilenetv2", "resnet50")


def pipeline_rate(shards, training: bool, repeats: int) -> float:
    """Images/s of one full pass, best of ``repeats`` (the first pass also warms the page cache)."""
    from pcam.config import AugmentConfig
    from pcam.input import dataset_size, make_dataset

    n = dataset_size(shards, "train")
    best = float("inf")
    for r in range(repeats + 1):
        ds = make_dataset(
            shards, "train", BATCH, training=training, augment_cfg=AugmentConfig() if training else None, seed=r
        )
        start = time.perf_counter()
        seen = 0
        for images, _ in ds:
            seen += int(images.shape[0])
        if r:  # the first pass traces and fills the page cache
            best = min(best, time.perf_counter() - start)
    assert seen == n, (seen, n)
    return n / best


def epoch_end_wait(shards, autotune_thread: bool, epochs: int = 4, steps: int = 32) -> float:
    """Mean seconds between Keras' ``on_train_end`` and ``fit`` returning, one ``fit`` per epoch.

    As :mod:`pcam.fit` trains: a fresh training dataset per epoch, the CNN, ``steps`` steps;
    the first epoch (tracing) is left out.
    """
    import keras
    import tensorflow as tf

    from pcam.config import AugmentConfig, ModelConfig
    from pcam.input import make_dataset
    from pcam.models import build_model
    from pcam.train import compile_model

    class EndTimer(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            self.ended = time.perf_counter()

    cfg = ModelConfig(batch_size=BATCH)
    keras.utils.set_random_seed(0)
    model = build_model("cnn", cfg)
    compile_model(model, cfg)
    waits = []
    for epoch in range(1, epochs + 1):
        ds = make_dataset(shards, "train", BATCH, training=True, augment_cfg=AugmentConfig(), seed=epoch)
        if autotune_thread:
            options = tf.data.Options()
            options.autotune.enabled = True  # TensorFlow's default, which make_dataset turns off
            ds = ds.with_options(options)
        timer = EndTimer()
        model.fit(
            ds,
            initial_epoch=epoch - 1,
            epochs=epoch,
            steps_per_epoch=steps,
            callbacks=[timer],
            verbose=0,
            shuffle=False,
        )
        if epoch > 1:
            waits.append(time.perf_counter() - timer.ended)
    return sum(waits) / len(waits)


def augment_rate(repeats: int = 50) -> float:
    """Images/s of :func:`pcam.augment.augment_batch` alone on one uint8 batch (flips/rot90/noise)."""
    import numpy as np

    from pcam.augment import augment_batch
    from pcam.config import AugmentConfig

    images = np.random.default_rng(0).integers(0, 256, (BATCH, 96, 96, 3), dtype=np.uint8)
    augment_batch(images, AugmentConfig(), [0, 0], "float32")  # compile
    seconds = best_of(lambda: [augment_batch(images, AugmentConfig(), [0, i], "float32") for i in range(repeats)])
    return repeats * BATCH / seconds


def consumption_rate(name: str, steps: int) -> float:
    import keras
    import numpy as np
    import tensorflow as tf

    from pcam.config import ModelConfig
    from pcam.models import build_model, set_trainable_for_stage
    from pcam.train import compile_model

    cfg = ModelConfig(batch_size=BATCH, image_size=96 if name == "resnet50" else 0)
    keras.utils.set_random_seed(0)
    model = build_model(name, cfg)
    set_trainable_for_stage(model, name, "train")
    compile_model(model, cfg)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (BATCH, 96, 96, 3)).astype(np.float32)
    y = (rng.random(BATCH) < 0.5).astype(np.float32)
    ds = tf.data.Dataset.from_tensors((x, y)).repeat()
    return fit_rate(model, ds, steps)


def run(quick: bool = False) -> list[Figure]:
    quiet_tf()
    shards = real_shards(1000 if quick else 20000)
    repeats = 1 if quick else 2
    models = ("logreg", "cnn") if quick else MODELS
    figures = []
    rates = {}
    for name in models:
        steps = {"logreg": 60, "cnn": 20, "mobilenetv2": 10, "resnet50": 5}[name] // (3 if quick else 1)
        rates[name] = consumption_rate(name, max(steps, 2))
        figures.append(Figure(f"train_step_{name}_images_per_s", rates[name], "img/s", load=loadavg()))
    figures.append(Figure("input_augment_only_images_per_s", augment_rate(), "img/s", load=loadavg()))
    decode = pipeline_rate(shards, training=False, repeats=repeats)
    figures.append(Figure("input_decode_only_images_per_s", decode, "img/s", load=loadavg()))
    pipe = pipeline_rate(shards, training=True, repeats=repeats)
    load = loadavg()
    fastest = max(rates, key=rates.get)
    ratio = pipe / rates[fastest]
    figures += [
        Figure("input_pipeline_images_per_s", pipe, "img/s", load=load),
        Figure("input_pipeline_vs_decode_only", pipe / decode, "ratio", load=load),
        Figure(f"input_pipeline_vs_fastest_model_{fastest}", ratio, "x", f">={GOAL:g}", ratio >= GOAL, load),
    ]
    for label, thread in (("tf_default", True), ("pcam", False)):
        wait = epoch_end_wait(shards, thread, epochs=2 if quick else 4, steps=4 if quick else 32)
        figures.append(Figure(f"input_epoch_end_wait_{label}_s", wait, "s", load=loadavg()))
    return figures


if __name__ == "__main__":
    main(run)
