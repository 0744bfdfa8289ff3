"""requirements.txt and environment.yml describe the same environment."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _requirements() -> list[str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_every_requirement_is_pinned_exactly():
    for line in _requirements():
        name, sep, version = line.partition("==")
        assert sep and name and version, f"'{line}' in requirements.txt is not pinned with =="


def test_environment_yml_mirrors_requirements():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1, "environment.yml needs exactly one pip section"
    assert sorted(pip_sections[0]) == sorted(_requirements())
    assert any(str(d).startswith("python=") for d in env["dependencies"])


def test_gitignore_keeps_generated_files_out():
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    for entry in (".venv/", "data/*", "!data/README.md", "runs/"):
        assert entry in ignored
