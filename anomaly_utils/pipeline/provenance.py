"""What a run records about where it ran (``env.json``: packages, git commit, data
fingerprint, hardware, the Keras backend of its kernels), and the check a resumed run makes
against it.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from anomaly_utils.artifacts import read_json, write_json
from anomaly_utils.data.layout import fingerprint, scan_dataset
from anomaly_utils.errors import LabError, ParameterError
from anomaly_utils.pipeline.parameters import REPO_ROOT
from anomaly_utils.process_environment import DEFAULTS, with_defaults

# The Keras backends a run may ask for (each imported under its own name), and the
# distributions that give each one's version.
BACKENDS = ("tensorflow", "jax", "torch")
_BACKEND_DISTRIBUTIONS = {"tensorflow": ("tensorflow", "tensorflow-cpu"), "jax": ("jax",),
                          "torch": ("torch",)}
# Recorded with the backend, installed or not (None): Keras and every backend's packages.
BACKEND_PACKAGES = ("keras", "tensorflow", "tensorflow-cpu", "jax", "jaxlib", "torch")


@functools.lru_cache(maxsize=1)
def visible_gpus() -> list[str] | None:
    """Names of the GPUs TensorFlow sees, or None if that could not be found out.

    Asked in a child process, so the pipeline's own process never loads TensorFlow (about
    0.5 GB that would otherwise sit idle while the notebooks' kernels do the work); asked
    once per process, since a sweep creates one run per configuration. Without an NVIDIA
    driver on the machine TensorFlow can see no GPU, so that child (several seconds of
    importing TensorFlow) is skipped.
    """
    if not Path("/proc/driver/nvidia/version").exists() and shutil.which("nvidia-smi") is None:
        return []
    code = ("import json, tensorflow as tf; "
            "print(json.dumps([d.name for d in tf.config.list_physical_devices('GPU')]))")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        return json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        return None


def software_info() -> dict:
    """Python version, package versions, git commit and dirty flag of this process."""
    from importlib import metadata

    packages = {}
    for dist in ("tensorflow-cpu", "tensorflow", "keras", "numpy", "scikit-learn", "scikit-image",
                 "opencv-python-headless", "papermill", "nbval", "matplotlib", "seaborn"):
        try:
            packages[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                                 timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"python": sys.version.split()[0], "packages": packages,
            "git_commit": git("rev-parse", "HEAD"),
            "git_dirty": None if status is None else bool(status)}


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _keras_config_backend() -> str | None:
    """The backend named in Keras' own ``keras.json`` (where Keras looks for it: KERAS_HOME,
    else ``~/.keras``, or ``/tmp/.keras`` when the home folder is not writable)."""
    if "KERAS_HOME" in os.environ:
        folder = Path(os.environ["KERAS_HOME"])
    else:
        home = Path(os.path.expanduser("~"))
        folder = (home if os.access(home, os.W_OK) else Path("/tmp")) / ".keras"
    try:
        return json.loads((folder / "keras.json").read_text()).get("backend") or None
    except (OSError, ValueError, AttributeError):
        return None


def keras_backend(requested: str | None = None) -> dict[str, Any]:
    """The Keras backend a new run's kernels use, found as Keras finds it but without
    importing Keras: ``requested`` (``--backend``), else ``KERAS_BACKEND``, else Keras'
    ``keras.json``, else Keras' default, TensorFlow.

    Returns:
        ``{"name", "set_by", "version": the backend package's version, "packages": {name:
        version or None}}``, recorded in ``env.json`` under ``"backend"``.

    Raises:
        ParameterError: a backend other than :data:`BACKENDS`, or one not installed.
    """
    set_by, name = next((source, value) for source, value in (
        ("--backend", requested), ("KERAS_BACKEND", os.environ.get("KERAS_BACKEND")),
        ("keras.json", _keras_config_backend()), ("default", "tensorflow")) if value)
    if name not in BACKENDS:
        raise ParameterError(f"the Keras backend {name!r} (from {set_by}) is not one the lab "
                             f"runs on", fix=f"use --backend with one of {list(BACKENDS)}")
    import importlib.util

    if importlib.util.find_spec(name) is None:
        raise ParameterError(f"the Keras backend {name!r} (from {set_by}) needs the package "
                             f"'{name}', which is not installed",
                             fix=f"install it, or choose another with --backend "
                                 f"({', '.join(b for b in BACKENDS if b != name)})")
    version = next(filter(None, map(_version, _BACKEND_DISTRIBUTIONS[name])), None)
    return {"name": name, "set_by": set_by, "version": version,
            "packages": {dist: _version(dist) for dist in BACKEND_PACKAGES}}


def recorded_backend(run_dir: str | os.PathLike) -> str | None:
    """The Keras backend a run was created with (``env.json``), None if it has no record."""
    path = Path(run_dir) / "env.json"
    if not path.is_file():
        return None
    return (read_json(path).get("backend") or {}).get("name")


def kernel_config(stderr_log: str | os.PathLike | None = None,
                  keras_backend: str | None = None):
    """traitlets configuration for the kernels that execute notebooks.

    The kernel's sockets are encrypted with CurveZMQ where the kernel supports it ("auto":
    ipykernel >= 7.3 declares it), which also stops ipykernel from warning on every
    notebook that it runs over TCP without encryption. Without CurveZMQ in pyzmq the
    configuration is empty and kernels start as before.

    With ``stderr_log``, the kernel process's own standard error (what C++ libraries write
    there directly, such as TensorFlow's ``E0000 ... remapper failed`` and oneDNN notices) is
    appended to that file instead of the console or the notebook, through
    :func:`kernel_manager_class`. What a cell prints from Python, errors and warnings
    included, still goes into the notebook.

    With ``keras_backend``, the kernel runs with ``KERAS_BACKEND`` set to it, whatever this
    process's environment says.
    """
    import zmq
    from traitlets.config import Config

    config = Config({"KernelManager": {"transport_encryption": "auto"}}) if zmq.has(
        "curve") else Config()
    logged = {}
    if stderr_log is not None:
        logged["stderr_log"] = str(stderr_log)
    if keras_backend is not None:
        logged["keras_backend"] = keras_backend
    if logged:
        config["LoggedKernelManager"] = Config(logged)
    return config


def kernel_environment(environment: Mapping[str, str], keras_backend: str = "") -> dict:
    """The environment a notebook kernel starts with: ``environment``, with ``KERAS_BACKEND``
    set to ``keras_backend`` where one is given, and every variable of
    :data:`anomaly_utils.process_environment.DEFAULTS` that the caller did not set (a user's
    own values are kept)."""
    env = with_defaults(environment)
    if keras_backend:
        env["KERAS_BACKEND"] = keras_backend
    return env


def logged_kernel_command(kernel_cmd: list[str]) -> list[str]:
    """The command of a kernel whose C-level output stays in its process's standard error.

    ipykernel copies what libraries write to file descriptors 1 and 2 into the output of the
    cell that runs, so TensorFlow's ``I0000``/``E0000`` notices would land in the executed
    notebook, where they read as errors. ``--IPKernelApp.capture_fd_output=False`` keeps
    them in the process's own stream (the run's ``logs/`` file); ``print``, warnings and
    tracebacks from Python reach the notebook as before. Other kernels' commands are
    returned unchanged.
    """
    if not any("ipykernel" in part for part in kernel_cmd):
        return list(kernel_cmd)
    return [*kernel_cmd, "--IPKernelApp.capture_fd_output=False"]


def kernel_manager_class():
    """A Jupyter kernel manager whose kernels write their process's standard error, and the
    C-level output of libraries (:func:`logged_kernel_command`), to the file named by its
    ``stderr_log`` setting (:func:`kernel_config`), not to the console or the notebook, and
    run on the Keras backend of its ``keras_backend`` setting, in :func:`kernel_environment`."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import Unicode

    class LoggedKernelManager(AsyncKernelManager):
        stderr_log = Unicode("", config=True, help="file the kernel's stderr is appended to")
        keras_backend = Unicode("", config=True, help="KERAS_BACKEND of the kernel")

        async def _async_launch_kernel(self, kernel_cmd, **kw):
            kw["env"] = kernel_environment(kw.get("env", os.environ), self.keras_backend)
            if self.stderr_log:
                Path(self.stderr_log).parent.mkdir(parents=True, exist_ok=True)
                with open(self.stderr_log, "ab") as log:  # the child keeps its own copy
                    kw["stderr"] = log
                    return await super()._async_launch_kernel(
                        logged_kernel_command(kernel_cmd), **kw)
            return await super()._async_launch_kernel(kernel_cmd, **kw)

    return LoggedKernelManager


def environment_info(data_fingerprint: str | None,
                     backend: dict[str, Any] | None = None) -> dict:
    """Package versions, git commit and dirty flag, data fingerprint, CPU and GPU, the
    variables of :data:`anomaly_utils.process_environment.DEFAULTS` as the kernels get them,
    and the Keras backend (:func:`keras_backend`'s record) when given."""
    software = software_info()
    kernel_env = kernel_environment(os.environ)
    return {
        "python": software["python"],
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "gpus": visible_gpus(),
        "packages": software["packages"],
        "git_commit": software["git_commit"],
        "git_dirty": software["git_dirty"],
        "data_fingerprint": data_fingerprint,
        "kernel_environment": {name: kernel_env[name] for name in DEFAULTS},
        **({"backend": backend} if backend is not None else {}),
    }


def data_fingerprint(effective: dict[str, dict[str, Any]]) -> str | None:
    """The fingerprint of the dataset the notebooks' ``data_dir`` names (None: no data_dir).

    Raises:
        DataError: as :func:`~anomaly_utils.data.layout.scan_dataset`, before any run starts:
            defect images without masks where a notebook that reads the data keeps
            ``allow_missing_masks`` off, a missing folder, an empty category.
    """
    readers = [p for p in effective.values() if "data_dir" in p]
    data_dir = next((p["data_dir"] for p in readers), None)
    if not data_dir:
        return None
    strict = any(not p.get("allow_missing_masks", True) for p in readers)
    return fingerprint(scan_dataset(data_dir, allow_missing_masks=not strict))


def check_resumed_environment(run_dir: Path, log=print) -> dict[str, Any]:
    """Compare the software and data a resumed run will use with its ``env.json``.

    A run resumed with other package versions, another commit or changed data mixes
    results from two set-ups. That is allowed (a crash should not cost the finished
    notebooks), but never silent: each difference is logged as a warning and appended to
    ``env.json`` under ``"resumes"``, so the run's record says which numbers came from what.
    (Score files carry the data fingerprint, so notebook 04 still refuses scores made from
    other data.)

    Returns:
        ``{key: {"then": ..., "now": ...}}`` for each differing key among python,
        git_commit, git_dirty and data_fingerprint, and ``{"packages": {name: {"then",
        "now"}}}`` for differing package versions; empty when nothing changed.
    """
    path = run_dir / "env.json"
    if not path.is_file():
        log(f"warning: run '{run_dir.name}' has no env.json, so its environment cannot be "
            "compared with this one")
        return {}
    saved = read_json(path)
    effective = read_json(run_dir / "params.json")["notebooks"]
    try:
        fingerprint = data_fingerprint(effective)
    except LabError as exc:  # the notebook that reads the data will stop with this error
        log(f"warning: the dataset could not be fingerprinted: {exc}")
        fingerprint = None
    now = {**software_info(), "data_fingerprint": fingerprint}
    differences: dict[str, Any] = {}
    for key in ("python", "git_commit", "git_dirty", "data_fingerprint"):
        if saved.get(key) != now[key]:
            differences[key] = {"then": saved.get(key), "now": now[key]}
    then_packages = saved.get("packages") or {}
    if saved.get("backend"):  # the backends' packages, installed or not, were recorded too
        then_packages = {**then_packages, **(saved["backend"].get("packages") or {})}
        now["packages"] = {**now["packages"],
                           **{dist: _version(dist) for dist in BACKEND_PACKAGES}}
    packages = {name: {"then": then_packages.get(name), "now": now["packages"].get(name)}
                for name in sorted(set(then_packages) | set(now["packages"]))
                if then_packages.get(name) != now["packages"].get(name)}
    if packages:
        differences["packages"] = packages
    if differences:
        changes = [f"{name} {v['then']} -> {v['now']}" for name, v in packages.items()]
        changes += [f"{key} {v['then']} -> {v['now']}" for key, v in differences.items()
                    if key != "packages"]
        log(f"warning: run '{run_dir.name}' was started with another environment; the "
            f"notebooks it finished then keep their results: {'; '.join(changes)} "
            f"(recorded in {path})")
        stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        saved.setdefault("resumes", []).append({"at": stamp, "differences": differences})
        write_json(path, saved)
    return differences
