"""Real-data check of the study's CNN: is it a useful tumour detector on real PCam?

Trains the CNN on 18,000 of ``$PCAM_SHARED/pcam-sample/train`` (2,000 held out to pick
the best epoch), then scores ``pcam-sample/valid`` (3,000 patches from other slides:
the official valid split) once, single view and 5-view TTA. Nothing is tuned on valid.
Recipe: flips + rot90 + colour jitter (no noise), one-cycle 1e-3 -> 5e-3, Adam, batch 64.

    python -m bench.real_cnn --out bench/out/real-cnn --epochs 14     # ~30 min on 2 cores

Images are held in memory (1.9 GB) rather than sharded, so the figure measures the
model, the augmentation and the LR policy, not the input pipeline.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bench.common import quiet_tf, sample_dir

VIEWS = {
    "identity": lambda a: a,
    "hflip": lambda a: a[:, :, ::-1],
    "vflip": lambda a: a[:, ::-1],
    "rot90": lambda a: np.rot90(a, 1, (1, 2)),
    "rot270": lambda a: np.rot90(a, 3, (1, 2)),
}


def load(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    images, labels = [], []
    for label in (0, 1):
        for file in sorted((root / split / str(label)).glob("*.jpg")):
            images.append(np.asarray(Image.open(file).convert("RGB"), dtype=np.uint8))
            labels.append(label)
    return np.stack(images), np.asarray(labels, np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/out/real-cnn"))
    parser.add_argument("--epochs", type=int, default=14)
    args = parser.parse_args()
    quiet_tf()
    import tensorflow as tf
    from sklearn.metrics import roc_auc_score

    from pcam.augment import augment_batch
    from pcam.config import AugmentConfig, ModelConfig, TrainConfig
    from pcam.models import build_model, load_model
    from pcam.policies import make_policy
    from pcam.train import compile_model, fit_model

    root = sample_dir()
    x, y = load(root, "train")
    x_valid, y_valid = load(root, "valid")
    order = np.random.default_rng(0).permutation(len(x))
    held, train = order[:2000], order[2000:]
    augment = AugmentConfig(color_jitter=True, noise=0.0)
    batch = 64

    def train_data(epoch: int):
        data = tf.data.Dataset.from_tensor_slices((x[train], y[train])).shuffle(len(train), seed=epoch).batch(batch)
        seeds = tf.data.Dataset.random(seed=epoch).batch(2)
        return tf.data.Dataset.zip((data, seeds)).map(
            lambda b, s: (augment_batch(tf.cast(b[0], tf.float32), augment, s), b[1]),
            num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    held_data = tf.data.Dataset.from_tensor_slices((x[held].astype(np.float32), y[held])).batch(256)
    model_cfg = ModelConfig(learning_rate=1e-3, max_learning_rate=5e-3, batch_size=batch, epochs=args.epochs)
    model = build_model("cnn", model_cfg, seed=42)
    compile_model(model, model_cfg)
    steps = -(-len(train) // batch)
    start = time.time()
    fit = fit_model(model, train_data, held_data, out_dir=args.out,
                    policy=make_policy("onecycle", model_cfg, args.epochs, TrainConfig(), steps),
                    epochs=args.epochs, steps_per_epoch=steps, train_images=len(train), seed=42, verbose=2)
    best = load_model(args.out / "model.keras", compile=False)
    probs = {name: best.predict(np.ascontiguousarray(view(x_valid)).astype(np.float32), batch_size=256,
                                verbose=0).ravel() for name, view in VIEWS.items()}
    mean = np.mean(list(probs.values()), axis=0)
    votes = np.mean([p >= 0.5 for p in probs.values()], axis=0) >= 0.5
    result = {
        "epochs": args.epochs, "train_minutes": round((time.time() - start) / 60, 2),
        "held_out_auc_best": fit["best"], "best_epoch": fit["best_epoch"],
        "valid_auc_single": roc_auc_score(y_valid, probs["identity"]),
        "valid_auc_tta5": roc_auc_score(y_valid, mean),
        "valid_accuracy_single": float(np.mean((probs["identity"] >= 0.5) == y_valid)),
        "valid_accuracy_tta5_vote": float(np.mean(votes == y_valid)),
    }
    print(json.dumps(result, indent=1))
    (args.out / "real_cnn.json").write_text(json.dumps(result, indent=1))
    print(f"real_cnn_valid_auc_tta5 {result['valid_auc_tta5']:.4f} auc >=0.93 "
          f"{'ok' if result['valid_auc_tta5'] >= 0.93 else 'MISSED'}")


if __name__ == "__main__":
    main()
