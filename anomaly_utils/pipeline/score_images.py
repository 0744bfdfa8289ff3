"""``python -m anomaly_utils score``: score new images with a finished run.

1. Check the run directory: the candidate's files (its registry entry's), its scoring
   settings and the chosen thresholds must all be there and belong together (the model name
   in each file agrees). Without ``--model``, the candidate is the one the run recommends
   (``metrics.json``).
2. Load it (:func:`anomaly_utils.scoring.serving.load_candidate`): a network in Keras' safe
   mode (no code from the file is ever executed), on this process's Keras backend (a
   ``.keras`` file is backend-neutral, so a run trained on one backend scores on another;
   the ``score`` command's ``--backend`` chooses it); the statistics floor from its arrays;
   a blend from its parts.
3. Read each image (files, or every image in a folder), score it, print its score and
   verdict against the run's image threshold, and optionally write a heatmap overlay. A
   run on parts (``cut-parts``; its data summary records ``parts``) cuts each image alike
   and scores it by its highest part.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from anomaly_utils.artifacts import atomic_path, read_json
from anomaly_utils.data.images import IMAGE_SUFFIXES, display_path, read_image
from anomaly_utils.errors import ArtifactError, DataError
from anomaly_utils.pipeline.provenance import recorded_backend
from anomaly_utils.scoring.candidates import BY_NAME
from anomaly_utils.scoring.serving import load_candidate, score_in_parts


def _require_run_dir(run_dir: Path) -> None:
    if not run_dir.is_dir():
        raise ArtifactError(f"run directory '{run_dir}' does not exist",
                            fix="pass --run runs/<run-id> of a finished run")


def recommended(run_dir: Path) -> str:
    """The candidate ``run_dir`` recommends on validation (``metrics.json``'s choice)."""
    path = run_dir / "metrics.json"
    _require_run_dir(run_dir)
    if not path.is_file():
        raise ArtifactError(f"run '{run_dir}' is incomplete: missing {path}, which names the "
                            "candidate it recommends",
                            fix=f"finish the run (python -m anomaly_utils run --resume "
                                f"{run_dir.name}), or pass --model")
    choice = read_json(path).get("choice", {}).get("model")
    if choice not in BY_NAME:
        raise ArtifactError(f"'{path}' recommends no known candidate (got {choice!r})",
                            fix="rerun notebook 04 for this run, or pass --model")
    return choice


def check_run(run_dir: Path, model: str) -> dict:
    """Return the run's threshold entry for ``model`` after checking the run's files."""
    _require_run_dir(run_dir)
    needed = [run_dir / folder / name for folder in (model, *BY_NAME[model].parts)
              for name in BY_NAME[folder].files]
    missing = [str(path) for path in needed if not path.is_file()]
    if not (run_dir / "thresholds.json").is_file():
        missing.append(str(run_dir / "thresholds.json"))
    if missing:
        raise ArtifactError(f"run '{run_dir}' is incomplete: missing {', '.join(missing)}",
                            fix=f"finish the run first (python -m anomaly_utils run --resume "
                                f"{run_dir.name})")
    thresholds = read_json(run_dir / "thresholds.json")
    if model not in thresholds or "image_threshold" not in thresholds[model]:
        raise ArtifactError(f"'{run_dir / 'thresholds.json'}' has no threshold for {model}",
                            fix="rerun notebook 04 for this run")
    if not BY_NAME[model].network:
        return thresholds[model]
    settings = read_json(run_dir / model / "scoring.json")
    if settings.get("model") != model:
        raise ArtifactError(f"'{run_dir / model / 'scoring.json'}' describes model "
                            f"{settings.get('model')!r}, not {model}",
                            fix="the run directory was edited by hand; rerun it")
    return thresholds[model]


def collect_images(paths: list[Path]) -> list[Path]:
    """Image files among ``paths``, expanding folders (sorted); unknown files are an error."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(f"folder '{display_path(path)}' holds no images",
                                fix="pass image files or a folder with PNG/JPEG/BMP/TIFF files")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"'{display_path(path)}' does not exist",
                            fix="check the path")
    return files


def score_paths(run_dir: Path, model: str | None, paths: list[Path],
                out_dir: Path | None = None, batch: int = 16, log=print) -> list[dict]:
    """Score image files with the run's candidate ``model`` (None: the one the run
    recommends); print and return one dict per image."""
    chosen = model is None
    model = recommended(run_dir) if chosen else model
    entry = check_run(run_dir, model)
    files = collect_images(paths)  # a wrong path is refused before a model loads
    served = load_candidate(run_dir, model)
    threshold = float(entry["image_threshold"])
    results = []
    used_names: set[str] = set()
    trained_on = recorded_backend(run_dir) or "unrecorded"
    log(f"{model}{' (recommended on validation)' if chosen else ''} of run {run_dir.name} "
        f"(trained on {trained_on}, scored on {_scored_on(model)}): threshold "
        f"{threshold:.6g} ({entry.get('strategy')})")
    parts = trained_on_parts(run_dir)
    if parts is not None:
        log(f"the run was trained on parts (cut-parts --parts {parts}): each image is cut "
            "alike and scored by its highest part")
    for start in range(0, len(files), batch):
        chunk = files[start:start + batch]
        originals = [read_image(p, served.color_mode) for p in chunk]
        if parts is None:
            scored = served.score(originals)
            scores, heats = scored.scores, scored.maps
        else:
            scores, heats = score_in_parts(served, originals, parts)
        for path, original, score, heat in zip(chunk, originals, scores, heats, strict=True):
            verdict = "ANOMALOUS" if score >= threshold else "normal"
            results.append({"path": str(path), "score": float(score), "verdict": verdict})
            log(f"{score:12.6g}  {verdict:<9}  {display_path(path)}")
            if out_dir is not None:
                name = overlay_name(path, used_names)
                write_overlay(out_dir / name, original, heat)
                results[-1]["overlay"] = str(out_dir / name)
    return results


def trained_on_parts(run_dir: Path) -> int | str | None:
    """How the run's images were cut (``cut-parts``), as its data summary records it, or
    None for a run on whole images."""
    summary = run_dir / "data_summary.json"
    return read_json(summary).get("parts") if summary.is_file() else None


def _scored_on(model: str) -> str:
    """The Keras backend that scores ``model`` in this process, or "numpy" for a candidate
    without a network (the statistics floor, which loads no Keras)."""
    if not any(BY_NAME[name].network for name in (model, *BY_NAME[model].parts)):
        return "numpy"
    import keras

    return keras.backend.backend()


def overlay_name(path: Path, used: set[str]) -> str:
    """A unique overlay file name for ``path``: ``<folder>_<stem>_heatmap.png``.

    Images from different folders often share a name (``good/000.png``, ``hole/000.png``);
    a counter keeps any remaining clash from overwriting an earlier overlay.
    """
    base = f"{path.parent.name}_{path.stem}" if path.parent.name else path.stem
    name, counter = f"{base}_heatmap.png", 2
    while name in used:
        name, counter = f"{base}_{counter}_heatmap.png", counter + 1
    used.add(name)
    return name


def write_overlay(path: Path, image: np.ndarray, heat: np.ndarray) -> None:
    """Write the image with its anomaly map blended over it (JET colour map), atomically."""
    import cv2


    height, width = image.shape[:2]
    heat = cv2.resize(heat.astype(np.float32), (width, height))
    low, high = np.percentile(heat, [1, 99.9])
    scaled = np.clip((heat - low) / max(high - low, 1e-12), 0, 1)
    colored = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)
    base = image if image.shape[-1] == 3 else np.repeat(image, 3, axis=-1)
    blended = cv2.addWeighted(cv2.cvtColor(base, cv2.COLOR_RGB2BGR), 0.55, colored, 0.45, 0)
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), blended):
            raise ArtifactError(f"could not write '{path}'", fix="check the --out folder")
