"""Bench 3: `pcam train` images/s vs a bare Keras ``model.fit`` on in-memory tensors.

Same model, batch, optimizer and number of images per epoch. ``pcam train`` reads
the real-sample shards through :func:`pcam.input.make_dataset` (online augmentation
on, as the configs have it), sets the LR every step, validates, checkpoints and
writes TensorBoard scalars after every epoch; the bare fit gets numpy arrays already
in memory and does none of that. Both figures are the training part of epoch 2
(epoch 1 includes tracing): ``pcam train`` records it in history.json, the bare fit
is timed by a callback around the same span.

Goal: ratio >= 0.9.

Also through ``pcam train``: the CNN with ``cnn_pool_first`` (conv, max-pool, BatchNorm,
ReLU) against the study's block order, same shards and steps (no goal: configs/sample.yaml
spends the difference on epochs).
"""

from __future__ import annotations

import shutil
import time

from bench.common import OUT, Figure, loadavg, main, quiet_tf, real_shards

GOAL = 0.9
BATCH = 64


def _pcam_rate(shards, name: str, steps: int, **model_keys) -> tuple[float, float]:
    """(images/s of epoch 2's training part, wall seconds of the whole train() call)."""
    from pcam.fsutil import read_json
    from pcam.train import train

    cfg = _config(name, steps, **model_keys)
    out = OUT / f"train-bench-{name}{'-' if model_keys else ''}{'-'.join(model_keys)}"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    train(shards, out, cfg, name, "constant", resume=False)
    wall = time.perf_counter() - start
    history = read_json(out / "history.json")
    return float(history[-1]["images_per_second"]), wall


def _config(name: str, steps: int, **model_keys):
    from pcam.config import config_from_dict

    return config_from_dict(
        {
            "train": {"models": [name], "policies": ["constant"], "steps_per_epoch": steps},
            "models": {name: {"epochs": 2, "batch_size": BATCH, **model_keys}},
        }
    )


def _bare_rate(shards, name: str, steps: int) -> tuple[float, float]:
    """(images/s of epoch 2, wall seconds of build + compile + fit) for a plain fit on numpy arrays."""
    import keras

    from pcam.input import load_arrays
    from pcam.models import build_model, set_trainable_for_stage
    from pcam.train import compile_model

    images, labels, _ = load_arrays(shards, "train")
    n = steps * BATCH
    x, y = images[:n].astype("float32"), labels[:n].astype("float32")
    cfg = _config(name, steps).model(name)

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.t0)

    start = time.perf_counter()
    keras.utils.set_random_seed(0)
    model = build_model(name, cfg)
    set_trainable_for_stage(model, name, "train")
    compile_model(model, cfg)
    timer = EpochTimer()
    model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=True, callbacks=[timer], verbose=0)
    wall = time.perf_counter() - start
    return n / timer.seconds[-1], wall


def run(quick: bool = False) -> list[Figure]:
    quiet_tf()
    shards = real_shards(1000 if quick else 20000)
    figures = []
    for name, steps in (("cnn", 4 if quick else 60), ("logreg", 8 if quick else 150)):
        bare, bare_wall = _bare_rate(shards, name, steps)
        ours, our_wall = _pcam_rate(shards, name, steps)
        load = loadavg()
        ratio = ours / bare
        figures += [
            Figure(f"train_{name}_pcam_images_per_s", ours, "img/s", load=load),
            Figure(f"train_{name}_bare_fit_images_per_s", bare, "img/s", load=load),
            Figure(f"train_{name}_pcam_vs_bare_fit", ratio, "ratio", f">={GOAL}", ratio >= GOAL, load),
            Figure(f"train_{name}_wall_pcam_vs_bare", bare_wall / our_wall, "ratio", load=load),
        ]
        if name == "cnn":
            pooled, _ = _pcam_rate(shards, name, steps, cnn_pool_first=True)
            figures += [
                Figure("train_cnn_pool_first_images_per_s", pooled, "img/s", load=loadavg()),
                Figure("train_cnn_pool_first_vs_study_order", pooled / ours, "ratio", load=loadavg()),
            ]
    return figures


if __name__ == "__main__":
    main(run)
