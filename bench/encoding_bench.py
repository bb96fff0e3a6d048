"""Bench: shard encodings (raw, raw+gzip, png) by size and read throughput, on real pixels.

The figures behind ``ShardConfig``'s default (raw, uncompressed) and the table in
``pcam.shard``'s docstring: bytes per image on disk and images/s of the evaluation
input path (read, parse, decode, batch 256), each relative to raw in the same run.
"""

from __future__ import annotations

import shutil

from bench.common import OUT, Figure, best_of, loadavg, main, quiet_tf, real_dataset

ENCODINGS = (("raw", "none"), ("raw", "gzip"), ("png", "none"))


def run(quick: bool = False) -> list[Figure]:
    quiet_tf()
    from pcam.config import AugmentConfig, ShardConfig
    from pcam.input import dataset_size, make_dataset
    from pcam.shard import load_index, write_shards
    from pcam.split import split_dataset

    n_train = 512 if quick else 20000
    dataset = real_dataset(n_train)
    split = OUT / f"split-encoding-{n_train}"
    if not (split / "split.json").exists():
        split_dataset(dataset, split, "random", (0.8, 0.1, 0.1), 0)
    rates, sizes = {}, {}
    for encoding, compression in ENCODINGS:
        name = f"{encoding}+{compression}"
        out = OUT / f"shards-encoding-{name}-{n_train}"
        shutil.rmtree(out, ignore_errors=True)
        write_shards(
            dataset,
            split,
            out,
            AugmentConfig(copies=0),
            ShardConfig(encoding=encoding, compression=compression),
            0,
            progress=False,
        )
        index = load_index(out, verify=False)
        records = dataset_size(out, "train")
        sizes[name] = sum(s["bytes"] for s in index["splits"]["train"]["shards"]) / records

        def read(out=out) -> None:
            for _ in make_dataset(out, "train", 256, training=False):
                pass

        rates[name] = records / best_of(read, 2)
    load = loadavg()
    figures = []
    for name in rates:
        figures += [
            Figure(f"shard_{name}_bytes_per_image", sizes[name], "bytes", load=load),
            Figure(f"shard_{name}_read_images_per_s", rates[name], "img/s", load=load),
        ]
        if name != "raw+none":
            figures.append(Figure(f"shard_{name}_read_vs_raw", rates[name] / rates["raw+none"], "ratio", load=load))
    return figures


if __name__ == "__main__":
    main(run)
