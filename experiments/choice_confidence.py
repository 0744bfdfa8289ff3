"""How sure is the validation set of a finished run's choice?

Runs the paired bootstrap of :mod:`anomaly_utils.evaluation.choice_confidence` on stored
runs, as notebook 04 and the auto run now do themselves, for runs made before they did.

Usage::

    python experiments/choice_confidence.py runs/mt-e2e       # an auto run: <id>-auto.json
    python experiments/choice_confidence.py runs/notebooks    # one run

For an auto run (``runs/<id>-auto.json`` beside the argument), each of its runs and then the
choice between them; for one run, its candidates. Prints the validation selection score,
the share of 1,000 resamples in which each candidate comes first, and the chosen one's lead
over the runner-up with its 90 % interval. Reads stored scores only; it trains and scores
nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from anomaly_utils.artifacts import read_json
from anomaly_utils.evaluation.choice_confidence import describe, with_confidence
from anomaly_utils.evaluation.selection import choose_candidate, validation_metrics
from anomaly_utils.pipeline.auto import AUTO, runs_confidence
from anomaly_utils.scoring.stored import load_run_scores


def run_confidence(run_dir: Path) -> dict:
    """The run's choice among its candidates, with its bootstrap."""
    val_pseudo = {name: s["val_pseudo"]
                  for name, s in load_run_scores(run_dir, splits=("val_pseudo",)).items()}
    choice = choose_candidate({name: validation_metrics(a) for name, a in val_pseudo.items()})
    return with_confidence(choice, val_pseudo)


def report(run_dir: Path) -> None:
    choice = run_confidence(run_dir)
    share = choice["confidence"]["first_share"]
    print(f"{run_dir}:")
    for name in choice["ranking"]:
        print(f"  {name:6s} validation {choice['scores'][name]:.3f}  first in {share[name]:.1%}")
    print(f"  {describe(choice['confidence'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path,
                        help="run folders, or an auto run's base (runs/<id>)")
    for path in parser.parse_args().runs:
        record = path.parent / f"{path.name}-{AUTO}.json"
        if not record.is_file():
            report(path)
            continue
        auto = read_json(record)
        for result in auto["runs"].values():
            report(path.parent / result["run"])
        confidence, note = runs_confidence(path.parent, auto["runs"], auto["chosen"]["preset"])
        print(f"{path} (auto): {describe(confidence) if confidence else note}")


if __name__ == "__main__":
    main()
