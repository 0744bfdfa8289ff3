"""Elongated images from a real set: does cutting them into parts (``cut-parts``) pay?

No development set is elongated, so this script makes one from a real set with masks:
strips of ``count`` tiles side by side, each tile resized to ``side`` x ``side`` px.
Training strips are three defect-free training tiles; a defect-free test strip three
defect-free test tiles; a defective test strip holds one defective tile, at a seeded
position, beside test tiles drawn from the defect-free ones (which therefore appear in more
than one strip; that changes no training data). Its mask is the tile's, in place.

``build`` writes the strips; ``compare`` reads two finished lab runs, one on the strips and
one on their parts (``python -m anomaly_utils cut-parts``), and prints per candidate the
strips run's test metrics beside the parts run's: image AUROC per strip (each strip's score
the highest of its parts', :func:`~anomaly_utils.evaluation.report.whole_images`) and pixel
AUROC / AUPRO on the parts' own grid and, stitched back and resized, on the strips' grid.

Usage::

    python experiments/elongated_strips.py build ../shared/datasets/magnetic_tile data/mt_strips
    python -m anomaly_utils cut-parts data/mt_strips data/mt_strips_parts
    python -m anomaly_utils run --data-dir data/mt_strips --run-id strips
    python -m anomaly_utils run --data-dir data/mt_strips_parts --run-id parts
    python experiments/elongated_strips.py compare runs/strips runs/parts data/mt_strips_parts
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from anomaly_utils.artifacts import read_json
from anomaly_utils.data.images import read_image, read_mask
from anomaly_utils.data.layout import GOOD, scan_dataset
from anomaly_utils.data.loading import resize_image, resize_mask
from anomaly_utils.data.parts import PARTS_TABLE, part_sources
from anomaly_utils.evaluation import metrics
from anomaly_utils.evaluation.report import whole_images
from anomaly_utils.scoring.candidates import CANDIDATES
from anomaly_utils.scoring.stored import load_scores


def _tile(path: Path, side: int) -> np.ndarray:
    return resize_image(read_image(path, "grayscale"), side)[..., 0]


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), array)


def build(source: Path, out: Path, count: int, side: int, seed: int) -> None:
    """Write the strips of ``source`` (see the module docstring) to ``out``."""
    index = scan_dataset(source)
    rng = np.random.default_rng(seed)
    goods = [s for s in index.test if s.label == 0]
    for split, samples in (("train", index.train), ("test", goods)):
        order = rng.permutation(len(samples))
        for number in range(len(samples) // count):
            picks = order[number * count:(number + 1) * count]
            _write(out / split / GOOD / f"{number:04d}.png",
                   np.hstack([_tile(samples[i].path, side) for i in picks]))
    for number, sample in enumerate(s for s in index.test if s.label == 1):
        position = int(rng.integers(count))
        others = rng.choice(len(goods), count - 1, replace=False)
        tiles = [_tile(goods[i].path, side) for i in others]
        tiles.insert(position, _tile(sample.path, side))
        mask = np.zeros((side, side * count), np.uint8)
        mask[:, position * side:(position + 1) * side] = \
            resize_mask(read_mask(sample.mask_path), side).astype(np.uint8) * 255
        _write(out / "test" / sample.defect_type / f"{number:04d}.png", np.hstack(tiles))
        _write(out / "ground_truth" / sample.defect_type / f"{number:04d}_mask.png", mask)
    print(f"strips of {count} tiles of {side} px written to {out}")


def _stitched(parts_run: Path, name: str, parts_dir: Path, strips: dict) -> np.ndarray:
    """The parts run's test maps stitched into strips and resized to the strips' map size,
    in the strips run's order: float (N, M, M)."""
    test = load_scores(parts_run / name / "scores_test.npz")
    rows = {line.split("\t")[0]: line.split("\t")
            for line in (parts_dir / PARTS_TABLE).read_text().splitlines()[1:] if line}
    pieces: dict[str, dict[int, np.ndarray]] = {}
    for path, part_map in zip(test["paths"], test["maps"], strict=True):
        _, source, position, *_ = rows[str(path)]
        pieces.setdefault(source, {})[int(position)] = part_map.astype(np.float32)
    size = strips["maps"].shape[-1]
    return np.stack([
        cv2.resize(np.hstack([pieces[str(p)][i] for i in sorted(pieces[str(p)])]),
                   (size, size), interpolation=cv2.INTER_AREA)
        for p in strips["paths"]])


def compare(strips_run: Path, parts_run: Path, parts_dir: Path) -> None:
    """Print the two runs' test metrics side by side (see the module docstring)."""
    print("| candidate | strips: image / pixel AUROC / AUPRO | parts: image AUROC per strip | "
          "parts: pixel AUROC / AUPRO, parts' grid | stitched, strips' grid |\n"
          "|---|---|---|---|---|")
    for name in CANDIDATES:
        strips = load_scores(strips_run / name / "scores_test.npz")
        parts = load_scores(parts_run / name / "scores_test.npz")
        sources = part_sources(parts_dir, [str(p) for p in parts["paths"]])
        whole = whole_images(parts["labels"], parts["scores"], sources, np.inf)
        stitched = _stitched(parts_run, name, parts_dir, strips)
        cells = [
            " / ".join(metrics.shown(v, 3) for v in (
                metrics.image_auroc(strips["labels"], strips["scores"]),
                metrics.pixel_auroc(strips["masks"], strips["maps"]),
                metrics.aupro(strips["masks"], strips["maps"]))),
            metrics.shown(whole["image_auroc"], 3),
            " / ".join(metrics.shown(v, 3) for v in (
                metrics.pixel_auroc(parts["masks"], parts["maps"]),
                metrics.aupro(parts["masks"], parts["maps"]))),
            " / ".join(metrics.shown(v, 3) for v in (
                metrics.pixel_auroc(strips["masks"], stitched),
                metrics.aupro(strips["masks"], stitched))),
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")
    for run in (strips_run, parts_run):
        choice = read_json(run / "metrics.json")["choice"]
        print(f"{run.name}: validation chose {choice['model']}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build")
    p.add_argument("source", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--count", type=int, default=3, help="tiles per strip")
    p.add_argument("--side", type=int, default=192, help="tile side, pixels")
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("compare")
    p.add_argument("strips_run", type=Path)
    p.add_argument("parts_run", type=Path)
    p.add_argument("parts_dir", type=Path)
    args = parser.parse_args(argv)
    if args.command == "build":
        build(args.source, args.out, args.count, args.side, args.seed)
    else:
        compare(args.strips_run, args.parts_run, args.parts_dir)


if __name__ == "__main__":
    main()
