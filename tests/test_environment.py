"""requirements.txt, requirements-gpu.txt and environment.yml describe the same environment; the
Makefile installs it online, from a wheelhouse, or around a backend the machine already has."""

import subprocess
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


def test_gpu_requirements_differ_only_in_the_jax_build():
    """TensorFlow's CPU build is the backend on a CPU, JAX's CUDA build on a GPU; each file
    says which it installs."""
    cpu, gpu = _requirements(), _requirements("requirements-gpu.txt")
    version = next(r for r in cpu if r.startswith("jax==")).partition("==")[2]
    assert f"jax[cuda12]=={version}" in gpu and f"jaxlib=={version}" in gpu
    assert sorted(r for r in cpu if not r.startswith("jax==")) == \
        sorted(r for r in gpu if not r.startswith("jax[cuda12]=="))
    assert any(r.startswith("tensorflow-cpu==") for r in cpu)
    for name, backend in (("requirements.txt", "TensorFlow"), ("requirements-gpu.txt", "JAX")):
        header = (ROOT / name).read_text().split("\n\n")[0]
        assert f"Keras runs on {backend}" in header, name


def test_makefile_installs_the_gpu_build_where_nvidia_smi_lists_a_gpu():
    makefile = (ROOT / "Makefile").read_text()
    assert "nvidia-smi" in makefile and "requirements-gpu.txt" in makefile
    assert "run lab: export KERAS_BACKEND ?= jax" in makefile


def _make_dry(*args: str) -> list[str]:
    """The commands ``make -n ARGS`` would run in the checkout (nothing is run)."""
    result = subprocess.run(["make", "-n", *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_make_wheelhouse_downloads_every_wheel_for_the_target_platform(tmp_path):
    wheels = tmp_path / "wheels"
    lines = _make_dry("wheelhouse", f"WHEELHOUSE={wheels}", "PLATFORM=manylinux_2_28_x86_64",
                      "PYTHON_VERSION=3.11", "REQUIREMENTS=requirements-gpu.txt")
    download = next(line.split() for line in lines if " download " in line)
    assert download[download.index("--dest") + 1] == str(wheels)
    assert download[download.index("--platform") + 1] == "manylinux_2_28_x86_64"
    assert download[download.index("--python-version") + 1] == "3.11"
    assert "--only-binary=:all:" in download  # pip's condition for another platform
    assert download[download.index("-r") + 1] == "requirements-gpu.txt"
    assert {"pip", '"setuptools>=64"'} <= set(download)  # what the venv step installs first
    wheel = next(line.split() for line in lines if " wheel " in line)
    assert "--no-deps" in wheel and wheel[wheel.index("--wheel-dir") + 1] == str(wheels)
    assert wheel[-1] == "."  # the lab itself
    here = next(line.split() for line in _make_dry("wheelhouse") if " download " in line)
    assert here[here.index("--dest") + 1] == "wheelhouse" and "--platform" not in here
    assert "--only-binary=:all:" not in here  # this machine: sdists allowed


def test_make_installs_from_a_wheelhouse_and_from_nowhere_else(tmp_path):
    venv, wheels = tmp_path / "venv", tmp_path / "wheels"
    lines = _make_dry("venv", f"VENV={venv}", f"WHEELHOUSE={wheels}")
    installs = [line for line in lines if " pip install " in line]
    assert len(installs) == 3  # pip and setuptools, the requirements, the lab (editable)
    for line in installs:
        assert f"--no-index --find-links {wheels}" in line, line
    assert "setuptools>=64" in installs[0] and "-r requirements.txt" in installs[1]
    online = [line for line in _make_dry("venv", f"VENV={venv}") if " pip install " in line]
    assert len(online) == 3 and not any("--no-index" in line for line in online)


def _reused_requirements(tmp_path, *args: str, has: str) -> tuple[list[str], list[str]]:
    """``make venv REUSE_BACKEND=1 ARGS`` for a Python whose importable backends are ``has``
    (a stand-in that answers the Makefile's question): the commands, and the requirements
    the venv would install (the filter it prints, run)."""
    python = tmp_path / "python"
    python.write_text(f"#!/bin/sh\necho {has}\n")
    python.chmod(0o755)
    venv = tmp_path / "venv"
    venv.mkdir(exist_ok=True)
    lines = _make_dry("venv", f"VENV={venv}", "REUSE_BACKEND=1", f"PYTHON={python}", *args)
    installs = [line for line in lines if " pip install " in line and " -r " in line]
    assert len(installs) == 1, lines
    filtered = [line for line in lines if line.startswith("grep ")]
    if not filtered:
        return lines, _requirements()
    assert len(filtered) == 1 and f"-r {venv}/requirements-reused.txt" in installs[0]
    subprocess.run(["bash", "-c", filtered[0]], cwd=ROOT, check=True, timeout=60)
    return lines, _requirements(str(venv / "requirements-reused.txt"))


def test_reuse_backend_keeps_the_machines_own_backend(tmp_path):
    names = {line.partition("==")[0] for line in _requirements()}
    lines, installed = _reused_requirements(tmp_path, has="jax")
    assert any("-m venv --system-site-packages" in line for line in lines)
    # The backend's own ml_dtypes comes with it: the pin would replace the machine's build.
    assert {line.partition("==")[0] for line in installed} == \
        names - {"jax", "jaxlib", "ml_dtypes"}
    # With JAX as the backend, TensorFlow is not installed either, except for make test.
    _, installed = _reused_requirements(tmp_path, "KERAS_BACKEND=jax", has="jax")
    assert {line.partition("==")[0] for line in installed} == \
        names - {"jax", "jaxlib", "ml_dtypes", "tensorflow-cpu"}
    _, installed = _reused_requirements(tmp_path, "KERAS_BACKEND=jax", "test", has="jax")
    assert "tensorflow-cpu" in {line.partition("==")[0] for line in installed}
    _, installed = _reused_requirements(tmp_path, "KERAS_BACKEND=torch", has="tensorflow torch")
    assert {line.partition("==")[0] for line in installed} == \
        names - {"tensorflow-cpu", "ml_dtypes"}
    # PyTorch alone brings no ml_dtypes: the pin is installed.
    _, installed = _reused_requirements(tmp_path, "KERAS_BACKEND=torch", has="torch")
    assert "ml_dtypes" in {line.partition("==")[0] for line in installed}
    # A Python without any backend: everything is installed, from the pins.
    lines, installed = _reused_requirements(tmp_path, has="")
    assert installed == _requirements() and not any(line.startswith("grep ") for line in lines)


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


def test_make_test_backends_adds_the_pinned_torch_and_runs_the_backend_tests(tmp_path):
    (line,) = _requirements("requirements-torch.txt")
    assert line.partition("==")[0] == "torch" and line.partition("==")[2]
    lines = _make_dry("test-backends", f"VENV={tmp_path / 'venv'}", f"WHEELHOUSE={tmp_path}")
    install = [line for line in lines if "-r requirements-torch.txt" in line]
    assert len(install) == 1 and f"--no-index --find-links {tmp_path}" in install[0]
    assert any(" -m pytest tests -m backends " in line for line in lines)
    assert "make test-backends" in (ROOT / ".ci" / "run").read_text()
    test_units = next(line for line in _make_dry("test") if '-m "not chain' in line)
    assert "not backends" in test_units  # make test leaves them to make test-backends
