"""GPU training throughput: ResNet50 at 224 px and MobileNetV2 at 96 px, float32 vs mixed precision + XLA.

    python -m bench.gpu_throughput [--tiny] [--out bench/out/gpu.json]

For every (model, precision mode, data source) it builds the model with
:func:`pcam.models.build_model`, compiles it with :func:`pcam.train.compile_model`
(the same optimizer, loss scaling and ``jit_compile`` switch as ``pcam train``) under
the dtype policy ``pcam train`` sets, makes every layer trainable (the whole network
trains, like NVIDIA's reference ResNet-50 numbers), and times ``model.fit`` over a
fixed number of steps after a warm-up that absorbs tracing and XLA compilation.

Data sources:

* ``memory``: one batch of raw 96x96 pixels repeated (no input cost: the model's ceiling);
* ``tfrecord``: our training pipeline, :func:`pcam.input.make_dataset` with online
  augmentation, over shards this script writes itself (synthetic PCam in the official
  HDF5 layout -> ``pcam ingest`` -> ``split`` -> ``shard``), so no data needs to be on
  the machine. ``tfrecord / memory`` shows whether the input pipeline limits training.

The ResNet50 model upsizes the 96 px patches to 224 inside the model (as ``pcam train``
does), so its compute is ResNet-50 at 224. Reference: NVIDIA publishes about 2,375
img/s for ResNet-50 training (TensorFlow, AMP + XLA) on one A100 at 224 px.
``--tiny`` shrinks everything (few steps, small batches, ResNet50 at 32 px) so the
script can be checked on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

NVIDIA_A100_RESNET50_AMP_XLA = 2375.0


def make_shards(root: Path, n_train: int, seed: int = 0) -> Path:
    """Synthetic official-format data -> canonical dataset -> split -> TFRecord shards under ``root``."""
    from pcam.config import AugmentConfig, ShardConfig, SyntheticConfig
    from pcam.ingest import ingest
    from pcam.shard import write_shards
    from pcam.split import split_dataset
    from pcam.synth import write_synthetic

    small = max(16, n_train // 8)
    source = write_synthetic(
        root / "synthetic", SyntheticConfig(train=n_train, valid=small, test=small, slides=12), seed
    )
    ingest(source, root / "dataset", fmt="synthetic", seed=seed)
    split_dataset(root / "dataset", root / "split", "official", (0.7, 0.2, 0.1), seed)
    write_shards(
        root / "dataset",
        root / "split",
        root / "shards",
        AugmentConfig(copies=0),
        ShardConfig(records_per_shard=1024),
        seed,
        progress=False,
    )
    return root / "shards"


def build(name: str, image_size: int, mixed: bool, xla: bool):
    import keras

    from pcam.config import ModelConfig
    from pcam.models import build_model
    from pcam.train import compile_model

    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    cfg = ModelConfig(image_size=image_size)
    keras.utils.set_random_seed(0)
    model = build_model(name, cfg)
    model.trainable = True
    compile_model(model, cfg, xla=xla)
    return model


def measure(model, dataset, batch: int, warmup: int, steps: int) -> dict[str, float]:
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=warmup, epochs=1, verbose=0)
    warm = time.perf_counter() - start
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    seconds = time.perf_counter() - start
    return {"images_per_second": steps * batch / seconds, "warmup_seconds": warm, "timed_seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_throughput", description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a few steps at small sizes (runs on a CPU)")
    parser.add_argument("--out", default="bench/out/gpu.json", help="JSON results file")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per measurement")
    parser.add_argument("--modes", default="fp32,amp_xla", help="comma-separated: fp32, amp_xla, amp, xla")
    parser.add_argument("--sources", default="memory,tfrecord", help="comma-separated: memory, tfrecord")
    args = parser.parse_args(argv)

    import keras
    import numpy as np
    import tensorflow as tf

    from pcam.config import AugmentConfig
    from pcam.input import make_dataset

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    if args.tiny:
        runs = [("resnet50", 32, 8), ("mobilenetv2", 96, 8)]
        warmup, steps, n_train = 1, args.steps or 2, 64
    else:
        runs = [("resnet50", 224, 256), ("mobilenetv2", 96, 512)]
        warmup, steps, n_train = 10, args.steps or 40, 8192
    modes = {"fp32": (False, False), "amp_xla": (True, True), "amp": (True, False), "xla": (False, True)}
    chosen_modes = [m for m in args.modes.split(",") if m]
    sources = [s for s in args.sources.split(",") if s]
    device = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU") if gpus else "CPU only"
    print(f"device: {device}; TensorFlow {tf.__version__}, Keras {keras.__version__}", flush=True)

    results = []
    with tempfile.TemporaryDirectory(prefix="pcam-gpu-bench-") as tmp:
        shards = make_shards(Path(tmp), n_train) if "tfrecord" in sources else None
        for name, size, batch in runs:
            rng = np.random.default_rng(0)
            x = rng.integers(0, 256, (batch, 96, 96, 3)).astype(np.float32)
            y = (rng.random(batch) < 0.5).astype(np.float32)
            for mode in chosen_modes:
                mixed, xla = modes[mode]
                for source in sources:
                    if source == "memory":
                        ds = tf.data.Dataset.from_tensors((x, y)).repeat().prefetch(tf.data.AUTOTUNE)
                    else:
                        ds = make_dataset(
                            shards,
                            "train",
                            batch,
                            training=True,
                            augment_cfg=AugmentConfig(),
                            drop_remainder=True,
                            repeat=True,
                        )
                    model = build(name, size, mixed, xla)
                    r = measure(model, ds, batch, warmup, steps)
                    r.update(model=name, image_size=size, batch=batch, mode=mode, source=source)
                    results.append(r)
                    print(
                        f"{name}@{size} {mode:8s} {source:8s} batch {batch}: {r['images_per_second']:9.1f} img/s "
                        f"(warm-up {r['warmup_seconds']:.0f} s)",
                        flush=True,
                    )
                    del model
                    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy("float32")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "host": platform.node(),
        "device": device,
        "gpus": len(gpus),
        "tensorflow": tf.__version__,
        "tiny": args.tiny,
        "results": results,
        "reference": {"nvidia_a100_resnet50_amp_xla_images_per_s": NVIDIA_A100_RESNET50_AMP_XLA},
    }
    out.write_text(json.dumps(record, indent=1))
    print()
    by_key = {(r["model"], r["mode"], r["source"]): r["images_per_second"] for r in results}
    for (name, mode, source), rate in by_key.items():
        print(f"gpu_{name}_{mode}_{source}_images_per_s {rate:.4g} img/s -")
    for name, _, _ in runs:
        for mode in chosen_modes:
            if (name, mode, "memory") in by_key and (name, mode, "tfrecord") in by_key:
                ratio = by_key[(name, mode, "tfrecord")] / by_key[(name, mode, "memory")]
                print(f"gpu_{name}_{mode}_tfrecord_vs_memory {ratio:.3g} ratio >=0.9")
        if (name, "fp32", "memory") in by_key and (name, "amp_xla", "memory") in by_key:
            print(
                f"gpu_{name}_amp_xla_speedup "
                f"{by_key[(name, 'amp_xla', 'memory')] / by_key[(name, 'fp32', 'memory')]:.3g}"
                " x -"
            )
    if ("resnet50", "amp_xla", "memory") in by_key and not args.tiny:
        ratio = by_key[("resnet50", "amp_xla", "memory")] / NVIDIA_A100_RESNET50_AMP_XLA
        print(f"gpu_resnet50_amp_xla_vs_nvidia_a100 {ratio:.3g} x >1")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
