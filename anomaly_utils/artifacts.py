"""Atomic, pickle-free reading and writing of run artifacts.

Every artifact goes to a temporary file in the destination folder and is renamed into
place only when complete, so a killed process never leaves a half-written model, score
file or JSON behind (rename is atomic on POSIX within one filesystem). Readers refuse
pickled content and name the file they could not read.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> write_json(d / "m.json", {"auroc": 0.9})
    >>> read_json(d / "m.json")["auroc"]
    0.9
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from anomaly_utils.errors import ArtifactError, LabError


def _process_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates files readable by their owner only; artifacts get the mode a plain open()
# would give them, so a shared runs/ folder stays readable. Read once, at import, because
# reading the umask means setting it, which is not thread-safe.
_FILE_MODE = 0o666 & ~_process_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None,
                durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary file keeps ``path``'s suffix (Keras and numpy look at it). On any
    exception the temporary file is removed and ``path`` is left untouched. A full disk
    becomes a :class:`LabError` naming the file. With ``durable`` the data is fsynced
    before the rename, so it also survives a power loss, not only a killed process.

    A process killed (SIGKILL, power loss) while the block runs leaves ``path`` as it was
    and one hidden temporary ``.<name>.<random><suffix>`` beside it. Readers open exact
    artifact names, so they never see it; it is safe to delete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=suffix if suffix is not None else path.suffix,
        dir=path.parent,
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, _FILE_MODE)
        yield tmp
        if durable:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise LabError(
                f"no space left on the device while writing '{path}'; the earlier "
                "artifacts are intact",
                fix="free disk space (or point run_dir elsewhere) and rerun with --resume",
            ) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _jsonable(value: Any) -> Any:
    """Convert numpy scalars/arrays to JSON types; NaN and inf become ``None``."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically. NaN/inf are written as ``null``."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_jsonable(data), indent=2, sort_keys=False) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON artifact, with an error naming the file if it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"'{path}' is missing", fix="rerun the notebook that writes it")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"'{path}' is not valid JSON ({exc})",
                            fix="delete it and rerun the notebook that writes it") from exc


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Save arrays to a compressed ``.npz`` atomically. Object arrays are refused."""
    for name, array in arrays.items():
        if np.asarray(array).dtype == object:
            raise TypeError(f"array '{name}' has dtype object; it would need pickle")
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load every array of an ``.npz`` file, never allowing pickle.

    Raises:
        ArtifactError: the file is missing, corrupt, or holds pickled objects.
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"'{path}' is missing", fix="rerun the notebook that writes it")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise ArtifactError(f"'{path}' holds pickled objects, which this lab never loads "
                                "(unpickling can run arbitrary code)",
                                fix="use score files written by this lab") from exc
        raise ArtifactError(f"'{path}' is corrupt ({exc})",
                            fix="delete it and rerun the notebook that writes it") from exc
    except Exception as exc:
        # A damaged member header reaches numpy's header parser, which can fail with
        # tokenize.TokenError or SyntaxError as well as the usual zip and EOF errors.
        raise ArtifactError(f"'{path}' is corrupt or truncated ({type(exc).__name__}: {exc})",
                            fix="delete it and rerun the notebook that writes it") from exc
    # numpy hands back a member that is not a .npy file as raw bytes.
    if raw := sorted(key for key, value in arrays.items() if not isinstance(value, np.ndarray)):
        raise ArtifactError(f"'{path}' is corrupt: {raw} are not numpy arrays",
                            fix="delete it and rerun the notebook that writes it")
    return arrays


def check_replaceable(out: str | os.PathLike, overwrite: bool, marker: str, writer: str,
                      overwrite_option: str) -> None:
    """Refuse to write a generated dataset onto ``out`` unless it is absent, empty, or (with
    ``overwrite``) a folder whose ``README.md`` holds ``marker``, i.e. one ``writer`` wrote.

    Raises:
        LabError: ``out`` is a file; it is not empty and ``overwrite`` is false; or it was not
            written by ``writer``, so ``overwrite_option`` will not delete it.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LabError(f"'{out}' is a file", fix="choose a folder path")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise LabError(f"'{out}' already exists and is not empty",
                       fix=f"choose another folder or pass {overwrite_option}")
    readme = out / "README.md"
    if not readme.is_file() or marker not in readme.read_text(errors="replace"):
        raise LabError(f"'{out}' is not empty and was not written by {writer}, so "
                       f"{overwrite_option} will not delete it",
                       fix="delete the folder yourself or choose another one")


def replace_folder(partial: str | os.PathLike, out: str | os.PathLike) -> None:
    """Move a completely written folder ``partial`` onto ``out``, replacing an old ``out``.

    Both must be on one filesystem (write ``partial`` beside ``out``). Readers see the old
    folder or the new one: the old one is first moved aside, then removed.
    """
    partial, out = Path(partial), Path(out)
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        os.replace(partial, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f"{out.name}.old-", dir=out.parent))
    os.replace(out, old / out.name)
    os.replace(partial, out)
    shutil.rmtree(old, ignore_errors=True)
