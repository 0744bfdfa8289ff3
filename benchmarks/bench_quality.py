"""`make bench-quality`: the user's command on every development set, one table.

Each set runs `python -m anomaly_utils run --data-dir DIR` as a user would type it (plus only
the options the set's own README asks for), into runs/quality-<set>-<timestamp>/, with its
wall time and the peak resident memory of the whole process tree. For a set other than the
synthetic carpet that command is `--preset auto` (runs ...-defaults and ...-real, and
...-auto.json with the choice): the table has a row per candidate of each run. It puts every
candidate's validation columns (the pseudo-labelled validation set, which chooses) apart from
its test columns (for the report only), and marks the candidate the command chose.

Sets: the synthetic carpet (written if absent), ELPV mono and poly (written from the PyPI
package elpv-dataset if absent; image labels only), and ../shared/datasets/magnetic_tile
where it exists (skipped with a printed reason elsewhere), as it is and split tile by tile
(``magnetic_tile_unseen``: its test tiles were never seen in training, written to
data/mt_unseen_tiles by experiments/unseen_tiles.py). Results go to
runs/bench/quality.json and, as a Markdown table, runs/bench/quality.md.

Usage: `python -m benchmarks.bench_quality [--sets carpet elpv_mono ...] [--preset NAME]
[-p NAME VALUE ...]` (`--preset defaults`: one run per set with the notebooks' defaults).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from anomaly_utils.artifacts import read_json
from anomaly_utils.pipeline.run_ids import new_run_id
from anomaly_utils.scoring.stored import CANDIDATES
from benchmarks.common import BENCH_DIR, ROOT, run_watched, write_result

SHARED = ROOT.parent / "shared" / "datasets"
METRICS = ("image_auroc", "pixel_auroc", "aupro")


@dataclass(frozen=True)
class DevelopmentSet:
    """A development set: its folder and the options its README asks a user to pass."""

    name: str
    folder: Path
    options: tuple[str, ...] = ()


SETS = (  # the real sets first: they take longest to look at
    DevelopmentSet("elpv_mono", ROOT / "data" / "elpv" / "mono",
                   ("-p", "allow_missing_masks", "True")),
    DevelopmentSet("elpv_poly", ROOT / "data" / "elpv" / "poly",
                   ("-p", "allow_missing_masks", "True")),
    DevelopmentSet("magnetic_tile", SHARED / "magnetic_tile"),
    # magnetic_tile with its defect-free images split tile by tile: no test tile was seen
    # in training (experiments/unseen_tiles.py; written from the shared set if absent).
    DevelopmentSet("magnetic_tile_unseen", ROOT / "data" / "mt_unseen_tiles"),
    DevelopmentSet("carpet", ROOT / "data" / "synthetic_carpet"),
)


def ensure_data(dev: DevelopmentSet) -> str | None:
    """Write a set the lab can generate if it is absent; the reason it cannot run, or None."""
    if dev.folder.is_dir():
        return None
    if dev.name == "carpet":
        from anomaly_utils.data.synthetic import generate_dataset

        generate_dataset(dev.folder)
        return None
    if dev.name.startswith("elpv"):
        from anomaly_utils.data.elpv import write_elpv
        from anomaly_utils.errors import DataError

        try:
            write_elpv(dev.folder.parent)
        except DataError as exc:
            return str(exc)
        return None
    source = SHARED / "magnetic_tile"
    if dev.name == "magnetic_tile_unseen" and source.is_dir():
        import subprocess

        subprocess.run([sys.executable, str(ROOT / "experiments" / "unseen_tiles.py"), "build",
                        str(source), str(dev.folder)], check=True)
        return None
    return f"{dev.folder} is absent (the team's shared datasets are not mounted here)"


def rows_of(dev: DevelopmentSet, metrics: dict, seconds: float, peak_gib: float,
            run_label: str | None = None, chosen: bool = True) -> list[dict]:
    """One row per candidate: validation and test columns, the choice, time and memory.

    ``run_label`` names the preset's run of an auto command in the candidate column;
    ``chosen`` is False for a run whose recommendation the auto command did not take.
    """
    choice = metrics.get("choice", {})
    first_in = (choice.get("confidence") or {}).get("first_share") or {}
    rows = []
    for name in CANDIDATES:
        report = metrics.get(name)
        if not report:
            continue
        validation = report.get("validation", {})
        rows.append({"set": dev.name,
                     "candidate": f"{name} ({run_label})" if run_label else name,
                     "chosen": chosen and name == choice.get("model"),
                     "val_selection": (choice.get("scores") or {}).get(name),
                     "val_first_in": first_in.get(name),
                     **{f"val_{m}": validation.get(m) for m in METRICS},
                     **{f"test_{m}": report.get(m) for m in METRICS},
                     # a run on parts (run --parts): the images they were cut from
                     "test_whole_image_auroc": (report.get("whole_images") or {}).get(
                         "image_auroc"),
                     "seconds": seconds, "peak_rss_gib": peak_gib})
    return rows


def command_rows(dev: DevelopmentSet, runs: Path, run_id: str, seconds: float,
                 peak_gib: float) -> list[dict]:
    """The rows of one command's runs: one run, or each preset's run of an auto command
    (``<run_id>-auto.json``), where only the candidate the auto command took is chosen."""
    auto = runs / f"{run_id}-auto.json"
    if not auto.is_file():
        return rows_of(dev, read_json(runs / run_id / "metrics.json"), seconds, peak_gib)
    record = read_json(auto)
    rows = []
    for label, run in record["runs"].items():
        rows += rows_of(dev, read_json(runs / run["run"] / "metrics.json"), seconds, peak_gib,
                        run_label=label, chosen=label == record["chosen"]["preset"])
    return rows


def markdown(rows: list[dict], commands: dict[str, str]) -> str:
    """The table as Markdown, validation columns before test columns, a command per set."""
    def cell(value):
        if value is None:
            return ""
        if isinstance(value, bool):
            return "**chosen**" if value else ""
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    keys = ["set", "candidate", "chosen", "val_selection", "val_first_in", "val_image_auroc",
            "val_pixel_auroc", "val_aupro", "test_image_auroc", "test_pixel_auroc", "test_aupro"]
    head = ("| set | candidate | chosen | val. selection | val. 1st in (its run) "
            "| val. image AUROC | val. pixel AUROC | val. AUPRO | test image AUROC "
            "| test pixel AUROC | test AUPRO |")
    if any(r.get("test_whole_image_auroc") is not None for r in rows):  # a run on parts
        keys.append("test_whole_image_auroc")
        head += " test image AUROC, whole images |"
    lines = [head + " s | GiB |", "|" + "---|" * (len(keys) + 2)]
    for r in rows:
        lines.append("| " + " | ".join(cell(r.get(k)) for k in keys)
                     + f" | {r['seconds']:.0f} | {r['peak_rss_gib']:.2f} |")
    lines.append("")
    lines += [f"- {name}: `{command}`" for name, command in commands.items()]
    return "\n".join(lines) + "\n"


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=[s.name for s in SETS],
                        choices=[s.name for s in SETS])
    parser.add_argument("--preset", help="passed to every run (default: none, as a user "
                        "types it: auto for the real sets, the defaults for the carpet)")
    parser.add_argument("-p", "--param", nargs=2, action="append", default=[],
                        metavar=("NAME", "VALUE"), help="passed to every run")
    args = parser.parse_args(sys.argv[1:])
    rows, commands, skipped = [], {}, {}
    for dev in (s for s in SETS if s.name in args.sets):
        reason = ensure_data(dev)
        if reason:
            print(f"skipped {dev.name}: {reason}")
            skipped[dev.name] = reason
            continue
        run_id = new_run_id(f"quality-{dev.name}-")
        extra = [x for pair in args.param for x in ("-p", *pair)]
        user_command = ["python", "-m", "anomaly_utils", "run", "--data-dir",
                        str(dev.folder.relative_to(ROOT) if dev.folder.is_relative_to(ROOT)
                            else Path("..") / dev.folder.relative_to(ROOT.parent)),
                        *dev.options, *extra,
                        *(("--preset", args.preset) if args.preset else ())]
        commands[dev.name] = " ".join(user_command)
        print(f"running {dev.name}: {commands[dev.name]}", flush=True)
        code, seconds, peak = run_watched([sys.executable, *user_command[1:], "--run-id", run_id,
                                           "--quiet"], cwd=ROOT)
        if code != 0:
            raise SystemExit(f"{dev.name}: the run failed with status {code} (runs/{run_id})")
        rows += command_rows(dev, ROOT / "runs", run_id, seconds, peak / 2**30)
        print(markdown([r for r in rows if r["set"] == dev.name], {}), flush=True)
    text = markdown(rows, commands)
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    (BENCH_DIR / "quality.md").write_text(text)
    print(text)
    result = {"rows": rows, "commands": commands, "skipped": skipped}
    write_result("quality", result)
    return result


if __name__ == "__main__":
    main()
