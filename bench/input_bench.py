"""Bench 2: the training input pipeline vs decode-only vs each model's train-step consumption.

* pipeline: ``pcam.input.make_dataset(training=True, augment_cfg=AugmentConfig())``,
  one full pass (read interleaved, shuffle, batch, parse + decode, flips/rot90/noise);
* decode-only: ``make_dataset(training=False)`` (read, parse, decode; no shuffle or augment);
* consumption: images/s of ``model.fit`` on one in-memory batch repeated (no input
  cost at all), stage-1 trainable settings and the same compile as ``pcam train``.

Goal: the pipeline feeds at least 3x what the fastest model eats, on the same cores.
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
    return figures


if __name__ == "__main__":
    main(run)
