"""Does the validation set rank a dataset's candidates as its real defects do?

Reads the ``metrics.json`` of finished runs on the same data (an auto run's ``<id>-defaults``
and ``<id>-real``, or one run) and ranks every candidate they hold twice: by the validation
selection score a run chooses by (mean of validation image and pixel AUROC on the shared
pseudo-labelled set) and by the test metrics. Candidates a run took from another (the floor
and AE-1 of an auto run's second run) are counted once.

Usage::

    python experiments/candidate_ranking.py runs/mt-defaults runs/mt-real [--json OUT]

Prints one row per candidate, then per test metric: Spearman's rho between the validation
selection score and the test metric, whether validation's first choice is the test's best
("top-1") and the test metric lost by following validation ("regret"). Reads stored results
only; it trains and scores nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scipy.stats import spearmanr

from anomaly_utils.artifacts import read_json
from anomaly_utils.pipeline.runs import read_status
from anomaly_utils.scoring.stored import CANDIDATES

TEST_METRICS = ("image_auroc", "pixel_auroc")


def candidates(run_dirs: list[Path]) -> list[dict]:
    """One row per distinct candidate: its run, validation selection score and test metrics."""
    rows, seen = [], set()
    for run_dir in run_dirs:
        metrics = read_json(run_dir / "metrics.json")
        status = read_status(run_dir)
        selection = metrics["choice"]["scores"]
        for name in CANDIDATES:
            if name not in selection or selection[name] is None:
                continue
            notebook = {"floor": "01_data_exploration", "ae1": "02_train_ae1"}.get(name)
            source = status.get(notebook, {}).get("reused_from") if notebook else None
            key = (source or run_dir.name, name)
            if key in seen:
                continue
            seen.add(key)
            rows.append({"run": run_dir.name, "candidate": name, "selection": selection[name],
                         **{m: metrics[name].get(m) for m in TEST_METRICS}})
    return rows


def agreement(rows: list[dict], metric: str) -> dict | None:
    """Spearman's rho, top-1 and regret of the validation ranking against ``metric``; None
    where fewer than three candidates have it."""
    rows = [r for r in rows if r[metric] is not None]
    if len(rows) < 3:
        return None
    rho = spearmanr([r["selection"] for r in rows], [r[metric] for r in rows]).statistic
    chosen = max(rows, key=lambda r: r["selection"])
    best = max(r[metric] for r in rows)
    return {"metric": metric, "n": len(rows), "rho": float(rho),
            "top1": chosen[metric] == best, "regret": best - chosen[metric]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run folders, same data")
    parser.add_argument("--json", type=Path, help="also write the rows and agreements here")
    args = parser.parse_args(argv)
    rows = candidates(args.runs)
    print("| run | candidate | validation selection | " + " | ".join(TEST_METRICS) + " |")
    print("|---|---|---|" + "---|" * len(TEST_METRICS))
    for r in sorted(rows, key=lambda r: -r["selection"]):
        shown = " | ".join("" if r[m] is None else f"{r[m]:.3f}" for m in TEST_METRICS)
        print(f"| {r['run']} | {r['candidate']} | {r['selection']:.3f} | {shown} |")
    agreements = [a for a in (agreement(rows, m) for m in TEST_METRICS) if a]
    for a in agreements:
        print(f"{a['metric']}: rho {a['rho']:.2f} over {a['n']} candidates, top-1 "
              f"{'yes' if a['top1'] else 'no'}, regret {a['regret']:.3f}")
    result = {"rows": rows, "agreement": agreements}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
