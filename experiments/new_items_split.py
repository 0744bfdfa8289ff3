"""A dataset with its defect-free images split by near-copy group: test normals never seen.

Inspection sets that hold several captures of one item, split image by image, test normals
that training saw (:mod:`anomaly_utils.data.near_copies`); their figures say how the lab
does on remembered items. This writes a copy of a category in the MVTec layout whose
``train/good`` and ``test/good`` together are split again by the lab's near-copy groups
(whole groups to ``test/good``, seeded, until it holds as many images as the original's, a
few more where the last group overflows), so that the test's normals, like its defective
items, are new to training as far as the rule finds near-copies. The defective images,
masks and any labelled ``val/`` defects are copied unchanged. For magnetic_tile, whose
source names tell the tiles, ``unseen_tiles.py build`` splits by the tiles themselves.

Usage::

    python experiments/new_items_split.py data/elpv/poly data/elpv_new_cells/poly
    python -m anomaly_utils run --data-dir data/elpv_new_cells/poly -p allow_missing_masks True
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

from anomaly_utils.data.layout import GOOD, scan_dataset
from anomaly_utils.data.near_copies import file_thumbnails, has_near_copy, near_copy_groups

# A group may take the test side this many images past the original's test/good count.
OVERFLOW = 5


def test_share(groups: np.ndarray, n_test: int, seed: int) -> set[int]:
    """Indices of the images whose whole groups go to test/good: groups drawn in a seeded
    order, each taken while the test side stays within ``n_test + OVERFLOW``, until it holds
    ``n_test`` or more."""
    chosen: set[int] = set()
    for group in np.random.default_rng(seed).permutation(int(groups.max()) + 1):
        if len(chosen) >= n_test:
            break
        members = np.flatnonzero(groups == group)
        if len(chosen) + len(members) <= n_test + OVERFLOW:
            chosen.update(members.tolist())
    return chosen


def build(source: Path, out: Path, seed: int) -> None:
    if out.exists():
        raise SystemExit(f"'{out}' exists: remove it or pick another folder")
    index = scan_dataset(source, allow_missing_masks=True)
    good = [s.path for s in index.train] + [s.path for s in index.test if s.label == 0]
    n_test = sum(s.label == 0 for s in index.test)
    thumbs = file_thumbnails(good)
    to_test = test_share(near_copy_groups(thumbs), n_test, seed)
    partial = out.with_name(f".partial-{out.name}")
    shutil.rmtree(partial, ignore_errors=True)
    for position, path in enumerate(good):
        split = "test" if position in to_test else "train"
        target = partial / split / GOOD / f"{position:05d}{path.suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    for folder in ("test", "ground_truth", "val"):
        for path in sorted((source / folder).glob("*/*")) if (source / folder).is_dir() else []:
            if folder == "test" and path.parent.name == GOOD:
                continue
            target = partial / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    partial.rename(out)
    train = [i for i in range(len(good)) if i not in to_test]
    remembered = has_near_copy(thumbs[sorted(to_test)], thumbs[train])
    print(f"{out}: {len(train)} train/good, {len(to_test)} test/good images; "
          f"{int(remembered.sum())} test normals with a near-copy in train/good "
          f"(the original: {n_test} test normals); defective images unchanged")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="a category folder in the MVTec layout")
    parser.add_argument("out", type=Path, help="the folder to write (must not exist)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    build(args.source, args.out, args.seed)


if __name__ == "__main__":
    main()
