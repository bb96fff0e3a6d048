"""Bench 4: 5-view TTA evaluation vs single-view inference, same model, same images.

Both go through :func:`pcam.evaluate.predict_views` (one batched forward pass per
batch of patches; the views are stacked into one V*B batch), so the ratio is what
TTA costs on top of plain inference. Goal: <= 5.5x for 5 views.
"""

from __future__ import annotations

from bench.common import Figure, best_of, loadavg, main, quiet_tf, real_shards

GOAL = 5.5
VIEWS = ("identity", "hflip", "vflip", "rot90", "rot270")


def run(quick: bool = False) -> list[Figure]:
    quiet_tf()
    import keras

    from pcam.config import ModelConfig
    from pcam.evaluate import predict_views
    from pcam.input import load_arrays
    from pcam.models import build_model

    shards = real_shards(1000 if quick else 20000)
    images, _, _ = load_arrays(shards, "test")
    images = images[: 256 if quick else 1024]
    models = ("cnn",) if quick else ("cnn", "mobilenetv2")
    figures = []
    for name in models:
        keras.utils.set_random_seed(0)
        model = build_model(name, ModelConfig())
        predict_views(model, images[:256], VIEWS, 128, progress=False)  # trace both shapes once
        predict_views(model, images[:256], ("identity",), 128, progress=False)
        repeats = 2 if quick else 3
        # Interleaved so both see the same machine load.
        single = tta = float("inf")
        for _ in range(repeats):
            single = min(
                single, best_of(lambda m=model: predict_views(m, images, ("identity",), 128, progress=False), 1)
            )
            tta = min(tta, best_of(lambda m=model: predict_views(m, images, VIEWS, 128, progress=False), 1))
        load = loadavg()
        ratio = tta / single
        n = len(images)
        figures += [
            Figure(f"tta_{name}_single_view_images_per_s", n / single, "img/s", load=load),
            Figure(f"tta_{name}_5_view_images_per_s", n / tta, "img/s", load=load),
            Figure(f"tta_{name}_5_view_cost_vs_single", ratio, "x", f"<={GOAL}", ratio <= GOAL, load),
        ]
    return figures


if __name__ == "__main__":
    main(run)
