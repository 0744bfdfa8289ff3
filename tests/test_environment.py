"""requirements.txt, requirements-gpu.txt and environment.yml describe the same environment."""

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def _requirements(name: str = "requirements.txt") -> list[str]:
    lines = (ROOT / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_every_requirement_is_pinned_exactly():
    for line in _requirements():
        name, sep, version = line.partition("==")
        assert sep and name and version, f"'{line}' in requirements.txt is not pinned with =="


def test_gpu_requirements_differ_only_in_the_tensorflow_build():
    cpu, gpu = _requirements(), _requirements("requirements-gpu.txt")
    assert "tensorflow-cpu==2.21.0" in cpu or any(r.startswith("tensorflow-cpu==") for r in cpu)
    version = next(r for r in cpu if r.startswith("tensorflow-cpu==")).partition("==")[2]
    assert f"tensorflow[and-cuda]=={version}" in gpu
    assert sorted(r for r in cpu if not r.startswith("tensorflow-cpu==")) == \
        sorted(r for r in gpu if not r.startswith("tensorflow[and-cuda]=="))


def test_makefile_installs_the_gpu_build_where_nvidia_smi_lists_a_gpu():
    makefile = (ROOT / "Makefile").read_text()
    assert "nvidia-smi" in makefile and "requirements-gpu.txt" in makefile


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


def test_pyproject_dependencies_are_the_pinned_ones():
    """Every dependency pyproject.toml declares (extras included) is pinned in
    requirements.txt at a version inside the declared range, and every pin is declared."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11")
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [Requirement(r) for r in project["dependencies"]]
    declared += [Requirement(r) for extra in project["optional-dependencies"].values()
                 for r in extra]
    # The CPU build of TensorFlow is pinned under its own distribution name.
    pins = {canonicalize_name(name.replace("tensorflow-cpu", "tensorflow")): version
            for name, _, version in (line.partition("==") for line in _requirements())}
    for requirement in declared:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"pyproject.toml declares {requirement} but requirements.txt has no pin"
        assert requirement.specifier.contains(pins[name]), \
            f"requirements.txt pins {name}=={pins[name]}, outside pyproject's {requirement}"
    undeclared = set(pins) - {canonicalize_name(r.name) for r in declared}
    assert not undeclared, f"pinned in requirements.txt but not declared in pyproject.toml: " \
                           f"{sorted(undeclared)}"
