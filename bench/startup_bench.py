"""Bench 5b: the fixed costs every TensorFlow step of the demo pays before and after its work.

kfp.local runs each step in its own process, so each one pays:

* ``tf_import_seconds``: ``python -c "import tensorflow"`` (best of 3; Keras 3 and,
  through Keras' sklearn wrapper, sklearn + scipy come with it);
* ``trace_<model>_<size>px_seconds``: the first epoch minus a later one, both under
  :func:`pcam.train.compile_model` with the whole network trainable (how the demo
  trains from scratch): tracing and instantiating the train and test steps. Two input
  sizes show whether it scales with the image (compute) or not (graph size);
* ``exit_teardown_seconds`` / ``..._gc_frozen``: the time from a ResNet50 process's
  last statement to its exit, without and with ``gc.freeze()`` (what the
  train/finetune/evaluate components call last).

These are the figures behind bench/RESULTS.md's note on the demo's 200 s.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from bench.common import Figure, best_of, loadavg, main, quiet_tf

IMAGES, BATCH = 384, 32
EXIT_SCRIPT = """
import gc, sys, time
import numpy as np
from pcam.config import ModelConfig
from pcam.models import build_model
model = build_model("resnet50", ModelConfig(image_size=32))
model.compile("adam", "binary_crossentropy")
model.fit(np.zeros((16, 96, 96, 3), np.float32), np.zeros(16, np.float32), verbose=0)
if sys.argv[1] == "freeze":
    gc.freeze()
print(time.time(), flush=True)
"""


def _import_seconds() -> float:
    return best_of(lambda: subprocess.run([sys.executable, "-c", "import tensorflow"], check=True, capture_output=True))


def _teardown_seconds(mode: str) -> float:
    proc = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, mode],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    ended = time.time()
    return ended - float(proc.stdout.strip().splitlines()[-1])


def _trace_seconds(name: str, size: int) -> tuple[float, float]:
    """(first epoch - third epoch, third epoch) seconds for ``IMAGES`` random images."""
    import numpy as np
    import tensorflow as tf

    from pcam.config import ModelConfig
    from pcam.models import build_model, set_trainable_for_stage
    from pcam.train import compile_model

    cfg = ModelConfig(batch_size=BATCH, image_size=size, bn_momentum=0.8)
    model = build_model(name, cfg)
    set_trainable_for_stage(model, name, "train", pretrained=False)
    compile_model(model, cfg)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (IMAGES, 96, 96, 3)).astype(np.float32)
    y = (rng.random(IMAGES) < 0.5).astype(np.float32)
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)
    valid = train.take(3)
    seconds = []
    for _ in range(3):
        start = time.perf_counter()
        model.fit(train, validation_data=valid, epochs=1, verbose=0, shuffle=False)
        seconds.append(time.perf_counter() - start)
    return seconds[0] - seconds[-1], seconds[-1]


def run(quick: bool = False) -> list[Figure]:
    quiet_tf()
    figures = [Figure("tf_import_seconds", _import_seconds(), "s", load=loadavg())]
    for mode in ("plain", "freeze"):
        suffix = "_gc_frozen" if mode == "freeze" else ""
        figures.append(Figure(f"exit_teardown_seconds{suffix}", _teardown_seconds(mode), "s", load=loadavg()))
    cases = [("mobilenetv2", 32)] if quick else [("mobilenetv2", 96), ("resnet50", 32), ("resnet50", 64)]
    for name, size in cases:
        trace, epoch = _trace_seconds(name, size)
        figures += [
            Figure(f"trace_{name}_{size}px_seconds", trace, "s", load=loadavg()),
            Figure(f"epoch_{name}_{size}px_seconds", epoch, "s", load=loadavg()),
        ]
    return figures


if __name__ == "__main__":
    main(run)
