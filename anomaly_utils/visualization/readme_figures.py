"""`make figures`: refresh the README's pictures in Images/ from a finished run.

The README shows a few figures of the latest default run (and, when given, of a run on real
data). They are copied from ``run_dir/figures/`` and downscaled so that the repository stays
small.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2

from anomaly_utils.artifacts import atomic_path, read_json
from anomaly_utils.errors import ArtifactError

# README figure name -> figure of the run it is made from.
README_FIGURES = {
    "samples.jpg": "01_defect_samples.png",
    "roc_pr.png": "04_roc_pr.png",
    "gallery.jpg": "05_side_by_side.png",
}
MAX_WIDTH = 900
JPEG_QUALITY = 82


def latest_run(runs_dir: Path = Path("runs")) -> Path:
    """The most recently finished run under ``runs_dir`` (one with a metrics.json)."""
    finished = [p.parent for p in runs_dir.glob("*/metrics.json")]
    if not finished:
        raise ArtifactError(f"no finished run under '{runs_dir}'", fix="run `make run` first")
    return max(finished, key=lambda p: (p / "metrics.json").stat().st_mtime)


def shrink_png(source: Path, target: Path, max_width: int = MAX_WIDTH) -> Path:
    """Copy a PNG downscaled to at most ``max_width`` pixels wide, atomically.

    The target's suffix picks the format: photographs (samples, galleries) go to JPEG,
    which is several times smaller than PNG for them; line plots stay PNG.
    """
    image = cv2.imread(os.fspath(source), cv2.IMREAD_COLOR)
    if image is None:
        raise ArtifactError(f"cannot read figure '{source}'", fix="rerun the run's notebooks")
    if image.shape[1] > max_width:
        scale = max_width / image.shape[1]
        image = cv2.resize(image, (max_width, round(image.shape[0] * scale)),
                           interpolation=cv2.INTER_AREA)
    options = ([cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if target.suffix == ".jpg"
               else [cv2.IMWRITE_PNG_COMPRESSION, 9])
    with atomic_path(target) as tmp:
        cv2.imwrite(os.fspath(tmp), image, options)
    return target


def refresh_readme_figures(dest: Path, run_dir: str | os.PathLike | None = None,
                           prefix: str = "") -> list[Path]:
    """Copy the README figures of ``run_dir`` (default: the latest run) into ``dest``.

    ``prefix`` distinguishes datasets, e.g. "magnetic_tile_" for a run on real data; it is
    taken from the run's dataset folder name when the run is not on the synthetic carpet.
    """
    run = Path(run_dir) if run_dir else latest_run()
    if not prefix:
        root = read_json(run / "metrics.json").get("dataset", {}).get("root") or ""
        name = Path(root).name
        prefix = "" if name in ("", "synthetic_carpet") else f"{name}_"
    written = []
    for target, source in README_FIGURES.items():
        path = run / "figures" / source
        if path.is_file():
            written.append(shrink_png(path, Path(dest) / f"{prefix}{target}"))
    return written
