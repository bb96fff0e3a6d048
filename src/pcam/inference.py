"""Helpers of the ``pcam_inference`` pipeline: list what a source folder holds, gather the results in one page.

The pipeline runs one step per slide, so it needs the slide list before any step
predicts: :func:`list_source` gives it (local folders through the same rules as
``pcam predict``; ``gs://`` folders by name and size, without downloading). The
per-slide results come back together in :func:`inference_page`: one self-contained
HTML page (heatmaps inlined) for the KFP UI, plus ``slides.csv``.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import html
import json
from pathlib import Path
from typing import Any

from pcam.errors import DataError
from pcam.fsutil import atomic_open


def list_source(uri: str) -> dict[str, Any]:
    """``{"slides": [uri, ...], "patches": bool}`` for a file or folder, local or ``gs://``."""
    from pcam import storage

    if storage.is_gcs(uri):
        return _list_gcs(uri)
    from pcam.predict import plan_inputs

    with contextlib.ExitStack() as stack:
        planned = plan_inputs([uri], stack)
        return {"slides": [str(p) for p in planned.slides], "patches": bool(planned.patches)}


def _list_gcs(uri: str) -> dict[str, Any]:
    """Top-level entries of a gs:// folder: slides by extension (.tif/.tiff by size), anything else patches."""
    from pcam import storage
    from pcam.ingest import IMAGE_EXTENSIONS
    from pcam.slide import MAX_PATCH_BYTES, SLIDE_EXTENSIONS

    if storage.is_file(uri):
        base, name = uri.rsplit("/", 1)
        files, folders = {name: storage.sizes(base).get(name, 0)}, []
    else:
        base, files = uri.rstrip("/"), storage.sizes(uri)
        folders = [n for n in storage.list_dir(uri) if n not in files]
        if not files and not folders:
            raise DataError(f"{uri}: does not exist or is empty")
    slides, patches = [], bool(folders)
    for name, size in sorted(files.items()):
        suffix = Path(name).suffix.lower()
        if suffix in SLIDE_EXTENSIONS and (suffix not in (".tif", ".tiff") or size > MAX_PATCH_BYTES):
            slides.append(f"{base}/{name}")
        elif suffix in IMAGE_EXTENSIONS or name.endswith((".h5", ".h5.gz", ".csv")):
            patches = True
    if not slides and not patches:
        raise DataError(f"{uri}: empty folder, nothing to predict")
    return {"slides": slides, "patches": patches}


def _num(value: float | None) -> str:
    return "no tissue" if value is None else f"{value:.4f}"


def _image(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def inference_page(result_dirs: list[Path], html_path: Path, csv_path: Path, patches_dir: Path | None = None) -> int:
    """Write the page showing every slide's heatmap and score, and ``slides.csv``; returns the slide count."""
    slides = []
    for result in result_dirs:
        for slide_json in sorted(Path(result).glob("slides/*/slide.json")):
            info = json.loads(slide_json.read_text())
            slides.append((slide_json.parent, info))
    columns = ["slide", "tiles_scored", "max", "top_k_mean", "label_at_operating_point", "tumour_regions"]
    with atomic_open(csv_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for folder, info in slides:
            writer.writerow(
                [
                    folder.name,
                    info["tiles_scored"],
                    info["score"]["max"],
                    info["score"]["top_k_mean"],
                    info.get("label_at_operating_point"),
                    info.get("tumour_regions"),
                ]
            )
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>pcam inference</title>",
        "<style>body{font-family:sans-serif}td,th{padding:2px 8px}figure{display:inline-block}</style>",
        "</head><body><h1>pcam inference</h1>",
    ]
    if slides:
        parts.append("<table><tr>" + "".join(f"<th>{c}</th>" for c in columns) + "</tr>")
        for folder, info in slides:
            cells = [
                folder.name,
                info["tiles_scored"],
                _num(info["score"]["max"]),
                _num(info["score"]["top_k_mean"]),
                info.get("label_at_operating_point"),
                info.get("tumour_regions"),
            ]
            parts.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
        parts.append("</table>")
        for folder, info in slides:
            parts.append(
                f"<figure><img src='{_image(folder / 'heatmap.png')}' style='max-width:640px'>"
                f"<figcaption>{html.escape(folder.name)}: max {_num(info['score']['max'])}, level "
                f"{info['level']} ({info['level_mpp']:.3f} µm/px), {info['tiles_scored']} tiles"
                "</figcaption></figure>"
            )
    if patches_dir is not None and (Path(patches_dir) / "predict.json").is_file():
        summary = json.loads((Path(patches_dir) / "predict.json").read_text()).get("patches", {})
        parts.append(f"<h2>Patches</h2><p>{html.escape(json.dumps(summary))}</p>")
    parts.append("</body></html>")
    with atomic_open(html_path, "w") as handle:
        handle.write("\n".join(parts))
    return len(slides)
