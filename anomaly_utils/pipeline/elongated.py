"""``run --parts``: a run on elongated images works on their near-square parts.

Every candidate sees an image resized to a square, which squeezes the long side of an
elongated image: on strips of three magnetic tiles (3:1) the user's command gave 0.757
image AUROC per strip on the whole strips and 0.944 on their parts (docs/experiments.md,
"Elongated images"). With ``--parts auto`` (the default), a run whose training images are,
at the median, 1.5 or more times as long as they are wide (so that each would be cut into
two parts or more) is made on the dataset cut into near-square parts
(:func:`anomaly_utils.data.parts.cut_into_parts`), written to ``<runs_dir>/<id>-parts``
beside the run; its report adds the images the parts came from. A dataset with defect
images but no masks stays whole (which part holds a defect is unknown) and the console says
so. ``--parts none`` keeps the images whole; ``--parts N`` cuts every image into N parts.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from anomaly_utils.data.images import display_path, image_size_of
from anomaly_utils.data.layout import ELONGATED, median_elongation, scan_dataset
from anomaly_utils.data.parts import AUTO_PARTS, cut_into_parts, parts_option, unmasked_defects
from anomaly_utils.errors import DataError
from anomaly_utils.pipeline.run_ids import RunExistsError, parts_folder, reserve_parts_folder

WHOLE = "none"


def run_parts_option(value: str) -> int | str:
    """``--parts`` of ``run`` and ``sweep``: "auto", "none" or a number of parts >= 1."""
    return parts_option(value, (AUTO_PARTS, WHOLE))


def data_for_run(data_dir: str | os.PathLike, parts: int | str, runs_dir: str | os.PathLike,
                 run_id: str | None, prefix: str = "") -> tuple[Path | None, str | None]:
    """The folder a run on ``data_dir`` should read, and a line for the console.

    Args:
        run_id: the run's id; None: a fresh timestamp id, claimed as the parts folder is
            made (:func:`~anomaly_utils.pipeline.run_ids.reserve_parts_folder`), so that two
            runs started in the same second keep their own parts and run folders.
        prefix: put before that timestamp (``sweep-`` for a sweep).

    Returns:
        ``(folder, line)``: ``folder`` is the parts folder written for the run
        (``<runs_dir>/<run_id>-parts``; the run's id is its name without ``-parts``), or
        None to read ``data_dir`` as it is; ``line`` says
        what was done and why, None where there is nothing to say (near-square images,
        ``--parts none``).

    Raises:
        DataError: ``--parts N`` on a dataset whose defect images lack masks, or the data
            cannot be read.
        RunExistsError: the run ``run_id`` exists (its parts folder stays as it is).
    """
    if parts == WHOLE:
        return None, None
    if parts == AUTO_PARTS:
        try:
            index = scan_dataset(data_dir, allow_missing_masks=True)
            elongation = median_elongation([image_size_of(s.path) for s in index.train])
        except DataError:
            return None, None  # the run's own checks name the problem and its fix
        if elongation < ELONGATED:
            return None, None
        unmasked = unmasked_defects(index)
        if unmasked:
            return None, (f"parts: the images are {elongation:.1f} times as long as they are "
                          f"wide, but {len(unmasked)} defect images have no mask, so which "
                          "part holds a defect is unknown: the images stay whole")
    if run_id and (Path(runs_dir) / run_id).exists():  # its parts are never cut again
        raise RunExistsError(f"'{Path(runs_dir) / run_id}' already exists; a run never "
                             "overwrites another",
                             fix=f"choose another --run-id (--sweep-id for a sweep), or "
                                 f"continue the run with --resume {run_id}")
    out = parts_folder(runs_dir, run_id) if run_id else reserve_parts_folder(runs_dir, prefix)
    try:
        cut_into_parts(data_dir, out, parts=parts, overwrite=True)
    except Exception:
        if run_id is None:
            shutil.rmtree(out, ignore_errors=True)  # the id claimed above is freed again
        raise
    how = "near-square parts" if parts == AUTO_PARTS else f"{parts} parts"
    return out, (f"parts: each image of {display_path(data_dir)} cut into {how} along its "
                 f"long side, in {display_path(out)} (--parts none keeps them whole); the "
                 "report adds the images they were cut from")
