"""The package's layout rules (docs/architecture.md): stages import only the stages before them,
evaluation stays pure numpy, intra-package imports sit at module level unless they load a heavy
library on purpose, and long modules say why they are long."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "anomaly_utils"
SHARED = {"errors", "artifacts", "seeding", "cpus"}
# Each stage and the stages it may import (the shared modules are open to all).
MAY_IMPORT = {
    "data": set(),
    "models": set(),
    "training": {"data", "models"},
    "scoring": {"data", "models", "training", "evaluation"},
    "evaluation": set(),
    "visualization": {"data", "scoring", "evaluation"},
    "pipeline": {"data", "models", "training", "scoring", "evaluation", "visualization"},
}
# Function-level imports of the package's own modules, each loading a heavy library on purpose.
LAZY = {
    ("pipeline/cli.py", "anomaly_utils.pipeline.score_images"): "only for `score`",
    ("scoring/serving.py", "anomaly_utils.scoring.scorer"): "Keras, only for a network",
    ("pipeline/sweep.py", "anomaly_utils.visualization"): "matplotlib, only for the figure",
}
LONG_MODULE = 400


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def stage_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0] if len(parts) > 1 else parts[0]


def imports(path: Path) -> list[tuple[str, bool]]:
    """``(module, at_module_level)`` for every import of ``path``; ``from a.b import c`` gives
    ``a.b`` and ``a.b.c`` (c may be a module). Imports under ``if TYPE_CHECKING:`` count as
    module level."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            top |= {id(child) for child in node.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}: relative import of {node.module}; write it absolute"
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            found += [(n, id(node) in top) for n in names]
        elif isinstance(node, ast.Import):
            found += [(a.name, id(node) in top) for a in node.names]
    return found


def test_stages_import_only_the_stages_before_them():
    wrong = []
    for path in modules():
        stage = stage_of(path)
        if stage not in MAY_IMPORT:
            continue
        for name, _ in imports(path):
            parts = name.split(".")
            if parts[0] != "anomaly_utils" or len(parts) < 2 or parts[1] in SHARED:
                continue
            target = parts[1]
            if target in MAY_IMPORT and target != stage and target not in MAY_IMPORT[stage]:
                wrong.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert not wrong, "imports against the stage order:\n" + "\n".join(sorted(set(wrong)))


def test_evaluation_and_data_know_no_model():
    for path in modules():
        if stage_of(path) in ("evaluation", "data"):
            heavy = {n.split(".")[0] for n, _ in imports(path)} & {"tensorflow", "keras"}
            # data.loading imports Keras for file_dataset's PyDataset, on request only.
            if path.name != "loading.py":
                assert not heavy, f"{path.relative_to(PACKAGE)} imports {heavy}"


def test_own_modules_are_imported_at_module_level():
    lazy = set()
    for path in modules():
        rel = str(path.relative_to(PACKAGE))
        for name, top in imports(path):
            if name.startswith("anomaly_utils") and not top:
                lazy.add((rel, name))
    unexplained = {item for item in lazy
                   if not any(item[0] == f and item[1].startswith(m) for f, m in LAZY)}
    assert not unexplained, f"function-level imports of the package without a reason: {unexplained}"


def test_long_modules_say_why():
    for path in modules():
        lines = path.read_text().count("\n")
        if lines > LONG_MODULE:
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            assert "One module because" in doc, (
                f"{path.relative_to(PACKAGE)} has {lines} lines: split it, or say in its "
                f"docstring why it is one module ('One module because ...')")


def test_every_list_of_candidates_is_read_from_the_registry():
    """One entry in scoring/candidates.py makes a candidate known everywhere it is listed."""
    from anomaly_utils.pipeline.parameters import NOTEBOOKS, SCOPES
    from anomaly_utils.pipeline.sharing import OUTPUTS
    from anomaly_utils.pipeline.sweep import MODEL_FOLDERS
    from anomaly_utils.scoring import stored
    from anomaly_utils.scoring.candidates import REGISTRY
    from anomaly_utils.visualization.plots import MODEL_COLORS

    assert tuple(c.name for c in REGISTRY) == stored.CANDIDATES
    assert tuple(c.name for c in REGISTRY if c.network) == stored.MODELS
    for c in REGISTRY:
        assert c.notebook in NOTEBOOKS
        assert SCOPES.get(c.name) == (None if c.parts else c.notebook)  # a blend has no knobs
        assert c.name in OUTPUTS[c.notebook]  # a sweep or an auto run copies its folder
        assert MODEL_COLORS[c.name] == c.color
        assert (c.name in MODEL_FOLDERS.get(c.notebook, ())) == c.network
    from anomaly_utils.pipeline.cli import build_parser

    score = next(action for action in build_parser()._subparsers._group_actions[0].choices[
        "score"]._actions if action.dest == "model")
    assert tuple(score.choices) == stored.CANDIDATES and score.default is None
    sources = "\n".join(p.read_text() for p in PACKAGE.rglob("*.py")
                        if p.name != "candidates.py")
    assert '("ae1", "ae2")' not in sources and "'ae1', 'ae2'" not in sources
