"""magnetic_tile with test tiles that training never saw: how much of its figures is memory?

The magnetic_tile set photographs each tile under six lightings (``exp1``..``exp6`` in
its source names), and the captures of one tile carry numbers within a few hundred of each
other (``exp1_num_114376`` and ``exp2_num_114403``). Its defect-free images were split into
``train/good`` and ``test/good`` image by image, so nearly every defect-free test image has
a sibling of the same tile in training, while no defective tile was ever seen. ``count``
prints how many defect-free test images share a tile with the training images.

``rule`` measures the lab's near-copy rule (:mod:`anomaly_utils.data.near_copies`) against
the tiles the source names tell: of the pairs of training images it joins into one group,
the share that show one tile (precision), of the pairs that show one tile, the share it
joins (recall), and how many validation images have a capture of their tile in the fit
set when the validation split is drawn by images or by items (seeds 0-2).

``build`` writes the same set with its defect-free images split tile by tile instead (whole
tiles to ``test/good``, seeded, until it holds as many images as the original's); the
defective images and masks are copied unchanged. Running the lab's command on both folders
shows what the lab scores on a tile it has not seen.

Usage::

    python experiments/unseen_tiles.py count ../shared/datasets/magnetic_tile
    python experiments/unseen_tiles.py rule ../shared/datasets/magnetic_tile
    python experiments/unseen_tiles.py build ../shared/datasets/magnetic_tile data/mt_unseen_tiles
    python -m anomaly_utils run --data-dir data/mt_unseen_tiles --run-id mt_unseen_tiles
"""

from __future__ import annotations

import argparse
import csv
import re
import shutil
from pathlib import Path

import numpy as np

from anomaly_utils.data.layout import GOOD, scan_dataset, split_train_val
from anomaly_utils.data.near_copies import file_thumbnails, near_copy_groups

SOURCES = "SOURCES.tsv"
# Captures of one tile are numbered within this distance of each other; distinct tiles
# are further apart (the sorted numbers' gaps: median 22, 85th percentile 240; with 200,
# 125 of the 150 tiles hold exactly six captures, one per lighting).
SAME_TILE_GAP = 200


def read_sources(root: Path) -> dict[str, str]:
    """{path in the layout: original file name} from the set's SOURCES.tsv."""
    with open(root / SOURCES, newline="") as table:
        rows = list(csv.DictReader(table, delimiter="\t"))
    return {row["mvtec_layout_path"]: row["source_path"] for row in rows}


def capture_number(source: str) -> int:
    found = re.search(r"num_(\d+)", source)
    if found is None:
        raise SystemExit(f"no capture number in source name '{source}'")
    return int(found.group(1))


def tiles_of(sources: dict[str, str]) -> dict[str, int]:
    """{layout path: tile number}: captures numbered within SAME_TILE_GAP of the previous
    one (in sorted order) belong to the same tile."""
    numbered = sorted((capture_number(source), path) for path, source in sources.items())
    tiles, tile, previous = {}, 0, None
    for number, path in numbered:
        if previous is not None and number - previous > SAME_TILE_GAP:
            tile += 1
        tiles[path] = tile
        previous = number
    return tiles


def defect_free(sources: dict[str, str]) -> dict[str, str]:
    """The defect-free images' entries (defective tiles are numbered apart: only the
    defect-free captures are grouped into tiles)."""
    return {path: source for path, source in sources.items() if path.split("/")[1] == GOOD}


def count(root: Path) -> None:
    tiles = tiles_of(defect_free(read_sources(root)))
    seen = {tile for path, tile in tiles.items() if path.startswith("train/")}
    test = [path for path in tiles if path.startswith("test/")]
    shared = sum(tiles[path] in seen for path in test)
    print(f"{root}: {len(seen)} tiles in train/good; test/good: {len(test)} images, "
          f"{shared} of a tile with captures in train/good")


def rule(root: Path) -> None:
    tiles = tiles_of(defect_free(read_sources(root)))
    train = scan_dataset(root).train
    tile = np.array([tiles[s.path.relative_to(root).as_posix()] for s in train])
    groups = near_copy_groups(file_thumbnails([s.path for s in train]))
    same_group = groups[:, None] == groups[None, :]
    same_tile = tile[:, None] == tile[None, :]
    np.fill_diagonal(same_group, False)
    np.fill_diagonal(same_tile, False)
    both = (same_group & same_tile).sum()
    print(f"{root}: {len(train)} training images, {len(set(tile.tolist()))} tiles, "
          f"{len(set(groups.tolist()))} groups; pairs in one group that show one tile "
          f"{both / max(same_group.sum(), 1):.3f}, pairs of one tile in one group "
          f"{both / same_tile.sum():.3f}")
    for val_split in ("images", "items"):
        leaks = []
        for seed in range(3):
            fit, val = split_train_val(train, 0.1, seed,
                                       groups.tolist() if val_split == "items" else None)
            seen = {tiles[s.path.relative_to(root).as_posix()] for s in fit}
            leaks.append(f"{sum(tiles[s.path.relative_to(root).as_posix()] in seen for s in val)}"
                         f" of {len(val)}")
        print(f"  val_split {val_split}: validation images with their tile in the fit set, "
              f"seeds 0-2: {', '.join(leaks)}")


def build(source: Path, out: Path, seed: int) -> None:
    if out.exists():
        raise SystemExit(f"'{out}' exists: remove it or pick another folder")
    sources = read_sources(source)
    tiles = tiles_of(defect_free(sources))
    good = sorted(tiles)
    n_test = sum(p.startswith("test/good/") for p in good)
    by_tile: dict[int, list[str]] = {}
    for path in good:
        by_tile.setdefault(tiles[path], []).append(path)
    test_tiles: set[int] = set()
    for tile in np.random.default_rng(seed).permutation(sorted(by_tile)):
        if sum(len(by_tile[t]) for t in test_tiles) >= n_test:
            break
        test_tiles.add(int(tile))
    partial = out.with_name(f".partial-{out.name}")
    shutil.rmtree(partial, ignore_errors=True)
    rows = []
    for index, path in enumerate(good):
        split = "test" if tiles[path] in test_tiles else "train"
        target = f"{split}/good/{index:04d}{Path(path).suffix}"
        (partial / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / path, partial / target)
        rows.append((target, sources[path]))
    for path in sorted(p for p in sources if p.split("/")[1] != GOOD):
        (partial / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / path, partial / path)
        rows.append((path, sources[path]))
    shutil.copytree(source / "ground_truth", partial / "ground_truth")
    with open(partial / SOURCES, "w", newline="") as table:
        writer = csv.writer(table, delimiter="\t", lineterminator="\n")
        writer.writerow(["mvtec_layout_path", "source_path"])
        writer.writerows(rows)
    partial.rename(out)
    n_moved = sum(tiles[p] in test_tiles for p in good)
    print(f"{out}: {len(good) - n_moved} train/good, {n_moved} test/good images "
          f"({len(test_tiles)} whole tiles), defective images unchanged")
    count(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    counting = commands.add_parser("count", help="test images sharing a tile with training")
    counting.add_argument("data_dir", type=Path)
    ruling = commands.add_parser("rule", help="the near-copy rule against the tiles")
    ruling.add_argument("data_dir", type=Path)
    building = commands.add_parser("build", help="split the defect-free images tile by tile")
    building.add_argument("source", type=Path)
    building.add_argument("out", type=Path)
    building.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.command == "count":
        count(args.data_dir)
    elif args.command == "rule":
        rule(args.data_dir)
    else:
        build(args.source, args.out, args.seed)


if __name__ == "__main__":
    main()
