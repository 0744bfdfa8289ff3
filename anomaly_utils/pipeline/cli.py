"""Command line: ``python -m anomaly_utils COMMAND ...``.

Commands: ``make-synthetic``, ``make-elpv``, ``cut-parts``, ``check-data``, ``run``, ``score``,
``sweep``, ``download``, ``refresh-notebooks``, ``figures``. A problem the user can fix prints
one readable message and exits with status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

from anomaly_utils.data.download import download_mvtec
from anomaly_utils.data.elpv import write_elpv
from anomaly_utils.data.layout import dataset_summary
from anomaly_utils.data.loading import load_dataset
from anomaly_utils.data.near_copies import file_thumbnails, near_copy_note, near_copy_report
from anomaly_utils.data.parts import AUTO_PARTS, cut_into_parts, parts_option
from anomaly_utils.data.synthetic import generate_dataset
from anomaly_utils.errors import LabError, ParameterError
from anomaly_utils.pipeline.auto import AUTO, default_preset, run_auto
from anomaly_utils.pipeline.elongated import data_for_run, run_parts_option
from anomaly_utils.pipeline.parameters import preset_overrides
from anomaly_utils.pipeline.provenance import BACKENDS, keras_backend, recorded_backend
from anomaly_utils.pipeline.run_ids import PARTS_SUFFIX
from anomaly_utils.pipeline.runs import refresh_notebooks, run_pipeline, summary
from anomaly_utils.pipeline.sweep import SWEEP_PREFIX, run_sweep
from anomaly_utils.scoring.candidates import CANDIDATES
from anomaly_utils.visualization.readme_figures import refresh_readme_figures


def _parameter_pairs(pairs: list[list[str]] | None) -> dict[str, str]:
    return {name: value for name, value in (pairs or [])}


def cmd_make_synthetic(args: argparse.Namespace) -> int:

    out = generate_dataset(args.out, seed=args.seed, size=args.size, n_train=args.n_train,
                           n_test_good=args.n_test_good, n_per_defect=args.n_per_defect,
                           overwrite=args.overwrite)
    print(f"synthetic carpet written to {out}")
    return 0


def cmd_make_elpv(args: argparse.Namespace) -> int:

    written = write_elpv(args.dest, source=args.source, seed=args.seed,
                         test_fraction=args.test_fraction, overwrite=args.overwrite)
    for module_type, folder in written.items():
        print(f"ELPV {module_type}: {folder} (counts in {folder / 'README.md'})")
    return 0


def cmd_cut_parts(args: argparse.Namespace) -> int:
    out = cut_into_parts(args.data_dir, args.out, parts=parts_option(args.parts),
                         overwrite=args.overwrite)
    print(f"parts written to {out} (counts in {out / 'README.md'}, sources in "
          f"{out / 'PARTS.tsv'})")
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    import json


    ds = load_dataset(args.data_dir, image_size=args.image_size, color_mode=args.color_mode,
                      val_fraction=0.0, allow_missing_masks=args.allow_missing_masks,
                      skip_unreadable=args.skip_unreadable)
    summary = dataset_summary(ds.index)
    summary["skipped"] = [f"{path}: {reason}" for path, reason in ds.skipped]
    summary["near_copies"] = near_copy_report(
        file_thumbnails([s.path for s in ds.index.train]), file_thumbnails(ds.test_paths),
        ds.test_labels)
    if note := near_copy_note(summary["near_copies"]):
        summary["notes"].append(note)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_run(args: argparse.Namespace) -> int:

    pairs = _parameter_pairs(args.param)
    preset = args.preset
    if preset is None and not args.resume:
        preset, why = default_preset(args.data_dir or pairs.get("data_dir"), args.until)
        print(f"preset: {why}", flush=True)
    auto = preset == AUTO
    overrides: dict = {} if auto else preset_overrides(preset)
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    if args.epochs is not None:
        overrides["epochs"] = str(args.epochs)
    overrides.update(pairs)
    if not args.resume and overrides.get("data_dir") is not None:
        folder, line = data_for_run(overrides["data_dir"], run_parts_option(args.parts),
                                    args.runs_dir, args.run_id)
        if line:
            print(line, flush=True)
        if folder is not None:  # the run takes the id its parts folder was written under
            overrides["data_dir"] = str(folder)
            args.run_id = folder.name.removesuffix(PARTS_SUFFIX)
    if args.resume:
        if overrides or args.preset:
            raise ParameterError("a resumed run keeps the parameters in its params.json",
                                 fix="drop the -p/--epochs/--data-dir/--preset options")
        run_dir = run_pipeline({}, run_id=args.resume, runs_dir=args.runs_dir, resume=True,
                               until=args.until, progress=not args.quiet,
                               backend=args.backend)
    elif auto:
        if args.until:
            raise ParameterError("--preset auto runs every notebook of each preset's run",
                                 fix="drop --until, or run one preset with --preset NAME")
        run_dir = run_auto(overrides, run_id=args.run_id, runs_dir=args.runs_dir,
                           progress=not args.quiet, backend=args.backend)
    else:
        run_dir = run_pipeline(overrides, run_id=args.run_id, runs_dir=args.runs_dir,
                               until=args.until, progress=not args.quiet,
                               backend=args.backend)
    print()
    print(summary(run_dir))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:

    grid = {name: values for name, *values in args.param}
    fixed = preset_overrides(args.preset)
    if args.data_dir:
        fixed["data_dir"] = args.data_dir
    fixed.update(_parameter_pairs(args.fixed))
    if fixed.get("data_dir") is not None:
        folder, line = data_for_run(fixed["data_dir"], run_parts_option(args.parts), args.runs_dir,
                                    args.sweep_id, prefix=SWEEP_PREFIX)
        if line:
            print(line, flush=True)
        if folder is not None:  # the sweep takes the id its parts folder was written under
            fixed["data_dir"] = str(folder.resolve())
            args.sweep_id = folder.name.removesuffix(PARTS_SUFFIX)
    sweep_dir = run_sweep(grid, fixed, sweep_id=args.sweep_id, runs_dir=args.runs_dir,
                          jobs=args.jobs, cluster=args.cluster, backend=args.backend,
                          until=args.until)
    print(f"sweep written to {sweep_dir} (comparison.csv, comparison.ipynb)")
    return 0


def scoring_backend(requested: str | None, run_dir: Path) -> str:
    """The Keras backend that ``score`` loads the run's model on, set for this process.

    ``--backend``, else the environment's choice as Keras makes it (``KERAS_BACKEND``, then
    ``keras.json``), else the backend the run was trained on (its ``env.json``) where that is
    installed, else TensorFlow. A ``.keras`` file is backend-neutral: a run trained on one
    backend scores on another, equal within float32 rounding (tests/test_backends.py).

    Raises:
        ParameterError: the backend is unknown or not installed, or Keras was already
            imported on another backend in this process.
    """
    record = keras_backend(requested)
    name = record["name"]
    trained_on = recorded_backend(run_dir) if run_dir.is_dir() else None
    if (record["set_by"] == "default" and trained_on in BACKENDS
            and importlib.util.find_spec(trained_on) is not None):
        name = trained_on
    if "keras" in sys.modules:  # Keras reads KERAS_BACKEND once, when it is imported
        import keras

        if keras.backend.backend() != name:
            raise ParameterError(f"Keras is already loaded on '{keras.backend.backend()}' in "
                                 f"this process, so the run cannot be scored on '{name}'",
                                 fix=f"score in a new process with --backend {name}")
    os.environ["KERAS_BACKEND"] = name
    return name


def cmd_score(args: argparse.Namespace) -> int:
    run_dir = Path(args.run)
    scoring_backend(args.backend, run_dir)
    from anomaly_utils.pipeline.score_images import score_paths  # Keras, if a network

    score_paths(run_dir, args.model, [Path(p) for p in args.paths],
                out_dir=Path(args.out) if args.out else None)
    return 0


def cmd_download(args: argparse.Namespace) -> int:

    folders = download_mvtec(args.category, Path(args.dest), base_url=args.base_url,
                             progress=not args.quiet)
    for folder in folders:
        print(f"ready: {folder}")
    return 0


def cmd_refresh_notebooks(args: argparse.Namespace) -> int:

    refresh_notebooks()
    return 0


def cmd_figures(args: argparse.Namespace) -> int:

    for path in refresh_readme_figures(Path(args.dest), run_dir=args.run):
        print(f"wrote {path}")
    return 0


def _add_backend(parser: argparse.ArgumentParser, note: str) -> None:
    parser.add_argument("--backend", choices=BACKENDS,
                        help="Keras backend of the notebooks' kernels (default: the environment's "
                             f"KERAS_BACKEND, else Keras' own default); recorded in env.json; "
                             f"{note}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m anomaly_utils", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-synthetic", help="write the procedural synthetic carpet dataset")
    p.add_argument("out", help="output folder (MVTec AD layout)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=256, help="image side length in pixels")
    p.add_argument("--n-train", type=int, default=240)
    p.add_argument("--n-test-good", type=int, default=30)
    p.add_argument("--n-per-defect", type=int, default=15)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_make_synthetic)

    p = sub.add_parser("make-elpv", help="write the ELPV solar cells (PyPI elpv-dataset) in "
                                         "the MVTec layout, one category per module type")
    p.add_argument("dest", help="parent folder of the categories mono/ and poly/")
    p.add_argument("--source", help="a folder with labels.csv and images/ (default: the "
                                    "installed elpv-dataset package)")
    p.add_argument("--seed", type=int, default=0, help="seeds the split of the normal cells")
    p.add_argument("--test-fraction", type=float, default=0.2,
                   help="share of the normal cells in test/good")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_make_elpv)

    p = sub.add_parser("cut-parts", help="write a dataset with each elongated image and its "
                                         "mask cut into near-square parts")
    p.add_argument("data_dir", help="a dataset in the MVTec AD layout (every defect masked)")
    p.add_argument("out", help="the folder to write the parts to")
    p.add_argument("--parts", default=AUTO_PARTS,
                   help="parts per image: auto (long side / short side, rounded) or a number")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_cut_parts)

    p = sub.add_parser("check-data", help="load every file of a dataset and print its summary")
    p.add_argument("data_dir")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--color-mode", default="auto", help="auto (detected), rgb or grayscale")
    p.add_argument("--allow-missing-masks", action="store_true")
    p.add_argument("--skip-unreadable", action="store_true",
                   help="leave unreadable images out and list them instead of stopping")
    p.set_defaults(func=cmd_check_data)

    p = sub.add_parser("run", help="run notebooks 01-05 with papermill into runs/<id>/")
    p.add_argument("--data-dir")
    p.add_argument("--epochs", type=int)
    p.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="a notebook parameter (NAME, or ae1.NAME / ae2.NAME for one model)")
    p.add_argument("--preset", help="a parameter set from notebooks/params/NAME.yaml; "
                   "defaults: the notebooks' own; auto: one run per preset (defaults, real), "
                   "the candidate validation prefers among them (runs <id>-defaults, "
                   "<id>-real, <id>-auto.json). Default: auto for a --data-dir other than "
                   "the synthetic carpet, else defaults")
    p.add_argument("--run-id")
    p.add_argument("--parts", default="auto",
                   help="auto: where the images are 1.5 or more times as long as wide and "
                        "every defect has a mask, the run works on near-square parts (written "
                        "to <runs-dir>/<id>-parts); none: whole images; N: N parts each")
    p.add_argument("--resume", metavar="RUN_ID", help="continue an interrupted run")
    p.add_argument("--until", metavar="NOTEBOOK", help="stop after this notebook (e.g. 03)")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--quiet", action="store_true", help="no per-cell progress bar")
    _add_backend(p, "a resumed run keeps the backend it started with")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("sweep", help="run every combination of parameter values")
    p.add_argument("-p", "--param", nargs="+", action="append", required=True,
                   metavar="NAME VALUE", help="a swept parameter and its values")
    p.add_argument("--set", dest="fixed", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="a parameter fixed for every configuration")
    p.add_argument("--data-dir")
    p.add_argument("--preset")
    p.add_argument("--jobs", type=int, default=1, help="configurations run in parallel")
    p.add_argument("--cluster", metavar="ADDRESS",
                   help="run the executions on a dask scheduler (tcp://HOST:PORT) or on "
                        "local:N worker processes; --runs-dir must be on a path every "
                        "worker reaches")
    p.add_argument("--sweep-id")
    p.add_argument("--parts", default="auto",
                   help="as for run: elongated images as near-square parts (auto), whole "
                        "(none) or N parts each")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--until", metavar="NOTEBOOK",
                   help="stop each configuration after this notebook: 04 leaves out the "
                        "galleries (the comparison needs only 04's metrics)")
    _add_backend(p, "every configuration runs on it")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("score", help="score new images with a trained run")
    p.add_argument("--run", required=True, help="a finished run directory")
    p.add_argument("--model", choices=CANDIDATES,
                   help="the candidate to score with (default: the one the run recommends "
                        "on validation, as metrics.json names it)")
    p.add_argument("--out", help="write a heatmap overlay per image here")
    p.add_argument("paths", nargs="+", help="image files or folders")
    p.add_argument("--backend", choices=BACKENDS,
                   help="Keras backend that loads and runs the model (default: KERAS_BACKEND, "
                        "else keras.json, else the backend the run was trained on where it is "
                        "installed, else tensorflow); a run trained on one backend scores on "
                        "another, equal within float32 rounding")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("download", help="download MVTec AD categories (verified)")
    p.add_argument("--category", required=True, help="a category name or 'all'")
    p.add_argument("--dest", default="data")
    p.add_argument("--base-url", help=argparse.SUPPRESS)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("refresh-notebooks", help="re-execute the notebooks in place (nbval)")
    p.set_defaults(func=cmd_refresh_notebooks)

    p = sub.add_parser("figures", help="refresh the README figures in Images/")
    p.add_argument("--dest", default="Images")
    p.add_argument("--run", help="run directory (default: the latest under runs/)")
    p.set_defaults(func=cmd_figures)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except LabError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
