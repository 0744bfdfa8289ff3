"""Verified, resumable download and safe extraction of the MVTec AD dataset.

One module because fetching, verifying and extracting an archive is one transaction: the
steps share the partial file, its checksum and the clean-up when any step fails.

The steps, for one category (or ``"all"``, the whole-dataset archive):

1. Skip the category if ``dest/<category>`` already has the MVTec layout.
2. Stream the official ``.tar.xz`` archive to ``dest/.downloads/<name>.part``. An
   interrupted transfer is resumed with an HTTP ``Range`` request (the server answers
   206); a server that ignores ``Range`` (answers 200) makes the download restart
   cleanly. Dropped connections are retried, each retry resuming where the last stopped.
3. Verify the SHA-256 against the hash pinned in :data:`ARCHIVES` or, where MVTec
   publishes none, against the hash recorded in ``dest/mvtec_ad.lock.json`` by the first
   download (trust on first use). A mismatch deletes the archive.
4. Extract with :mod:`tarfile`'s ``"data"`` filter into a temporary folder inside
   ``dest``, refusing absolute paths, ``..`` components, links that leave the folder
   and device files; check the layout; rename the category folder into place.
5. Record ``{url, sha256, size}`` in the lock file and delete the archive.

Steps 2-5 hold an exclusive ``flock`` on ``dest`` itself, so a second download into the same
folder waits for the first and then finds its categories present.

A file placed by hand at ``dest/.downloads/<name>`` (e.g. fetched with a browser when
the link has moved) is verified and extracted instead of being downloaded.

MVTec rotates its mydrive.ch share links from time to time; the links below are those
of the MVTec AD download page as used by anomalib and other public code in 2026. Only the
whole-dataset archive has a published SHA-256 (the one anomalib verifies); the
per-category archives have none, so their first download is pinned in the lock file.

Example:
    >>> from pathlib import Path
    >>> folders = download_mvtec("carpet", Path("data"))  # doctest: +SKIP
    >>> folders  # doctest: +SKIP
    [PosixPath('data/carpet')]
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import json
import lzma
import os
import re
import shutil
import socket
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path

from anomaly_utils.artifacts import write_json
from anomaly_utils.errors import DataError, LabError, ParameterError

MVTEC_CATEGORIES: tuple[str, ...] = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)
MVTEC_PAGE = "https://www.mvtec.com/company/research/datasets/mvtec-ad/downloads"
_SHARES = "https://www.mydrive.ch/shares/"
ARCHIVES: dict[str, tuple[str, str | None]] = {
    "bottle": (_SHARES + "150452/132a93367fb17cdf968dfb5c4013f6e7/download/"
               "420937370-1629958698/bottle.tar.xz", None),
    "cable": (_SHARES + "150453/10f960e07fec2838b2cd512586633a32/download/"
              "420937413-1629958794/cable.tar.xz", None),
    "capsule": (_SHARES + "150454/e0ce6dd74eb150f46c0d98131b3703f2/download/"
                "420937454-1629958872/capsule.tar.xz", None),
    "carpet": (_SHARES + "150455/eac7fbce84d93a5094e13f391170eca4/download/"
               "420937484-1629959013/carpet.tar.xz", None),
    "grid": (_SHARES + "150456/bb0b2e3dc804ccb8b4485e01f8e4493b/download/"
             "420937487-1629959044/grid.tar.xz", None),
    "hazelnut": (_SHARES + "150457/51d49f65e84bdc100ff8035d7dd783ea/download/"
                 "420937545-1629959162/hazelnut.tar.xz", None),
    "leather": (_SHARES + "150458/923030ce14e10a7d147e95d0f8885f6b/download/"
                "420937607-1629959262/leather.tar.xz", None),
    "metal_nut": (_SHARES + "150459/c68856a21dca589b0f8ff6d4ee0f18f4/download/"
                  "420937637-1629959294/metal_nut.tar.xz", None),
    "pill": (_SHARES + "150460/d4f1c04da67034ccc8d8b5fa3e73f244/download/"
             "420938129-1629960351/pill.tar.xz", None),
    "screw": (_SHARES + "150461/242f454cc6385e5693c4fd4b94567d1e/download/"
              "420938130-1629960389/screw.tar.xz", None),
    "tile": (_SHARES + "150462/5479f0fdc97bc6fa16eab0cb0cf0109f/download/"
             "420938133-1629960456/tile.tar.xz", None),
    "toothbrush": (_SHARES + "150463/895a1a5fb84b958f07417784b060434b/download/"
                   "420938134-1629960477/toothbrush.tar.xz", None),
    "transistor": (_SHARES + "150464/99b8ea0332438d64fcc2475ee73f9c29/download/"
                   "420938166-1629960554/transistor.tar.xz", None),
    "wood": (_SHARES + "150465/d5b4115b720cdb54d217e75636e6e374/download/"
             "420938383-1629960649/wood.tar.xz", None),
    "zipper": (_SHARES + "150466/bd155b557520edaf692d9bfdb915c24a/download/"
               "420938385-1629960680/zipper.tar.xz", None),
    # 5,264,982,680 bytes.
    "all": (_SHARES + "150996/b52ecdcbf521176e9db9c731f2304b27/download/"
            "420938113-1629960298/mvtec_anomaly_detection.tar.xz",
            "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d"),
}
LOCK_NAME = "mvtec_ad.lock.json"
DOWNLOADS_DIR = ".downloads"
_CHUNK = 1 << 20
_RETRY_WAIT_S = 1.0
_USER_AGENT = "anomaly-utils-download/1.0 (+python urllib)"
_GONE = (401, 403, 404, 410)


def download_mvtec(
    category: str,
    dest: str | os.PathLike,
    base_url: str | None = None,
    progress: bool = True,
    *,
    timeout_s: float = 60.0,
    attempts: int = 5,
) -> list[Path]:
    """Download, verify and extract one MVTec AD category (or all 15) into ``dest``.

    Args:
        category: one of :data:`MVTEC_CATEGORIES`, or ``"all"`` for the whole-dataset
            archive (about 5.3 GB).
        dest: folder that receives ``<category>/`` folders, the lock file
            ``mvtec_ad.lock.json`` and the temporary ``.downloads/`` folder.
        base_url: replaces the official host and path; the archive's file name is
            appended (``base_url/carpet.tar.xz``). For mirrors and tests.
        progress: show a progress bar on stderr while downloading.
        timeout_s: seconds a connect or a read may stall before it counts as a failure.
        attempts: tries per archive; each retry resumes the partial download.

    Returns:
        The extracted category folders ``dest/<category>``, in :data:`MVTEC_CATEGORIES`
        order for ``"all"``; folders that were already complete are included.

    Raises:
        ParameterError: unknown category, bad ``base_url`` or ``dest``.
        DataError: an existing category folder is incomplete, or the archive does not
            hold the MVTec layout.
        LabError: network failure, checksum mismatch, unsafe archive member, full disk.

    Example:
        >>> download_mvtec("carpet", "data", progress=False)  # doctest: +SKIP
        [PosixPath('data/carpet')]
    """
    wanted = _validate(category, base_url, timeout_s, attempts)
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise ParameterError(f"dest '{dest}' is a file, not a folder",
                             fix="pass a folder, e.g. --dest data/")
    folders = [dest / name for name in wanted]
    if all(_is_complete(folder) for folder in folders):
        for folder in folders:
            print(f"MVTec AD '{folder.name}' is already present in '{folder}'; not downloading")
        return folders
    dest.mkdir(parents=True, exist_ok=True)
    with _download_lock(dest):
        # Checked again under the lock: a download we waited for may have brought them.
        missing = [folder for folder in folders if not _is_complete(folder)]
        for folder in folders:
            if folder not in missing:
                print(f"MVTec AD '{folder.name}' is already present in '{folder}'; "
                      "not downloading")
        if missing:
            _download_missing(category, dest, base_url, missing, progress=progress,
                              timeout_s=timeout_s, attempts=attempts)
    return folders


@contextlib.contextmanager
def _download_lock(dest: Path) -> Iterator[None]:
    """Hold an exclusive lock on the folder ``dest`` itself while downloading into it.

    Two downloads into one folder would append to the same partial archive; the second
    waits for the first (saying so), then finds what the first brought. Where ``fcntl``
    does not exist (Windows) concurrent downloads are not guarded.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(dest, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"Another download into '{dest}' is running; waiting for it to finish",
                  flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _download_missing(category: str, dest: Path, base_url: str | None, missing: list[Path],
                      *, progress: bool, timeout_s: float, attempts: int) -> None:
    """Fetch, verify and extract the archive of ``category`` for the folders ``missing``."""
    url, pinned = ARCHIVES[category]
    name = url.rsplit("/", 1)[-1]
    if base_url is not None:
        url = base_url.rstrip("/") + "/" + name
    lock_path = dest / LOCK_NAME
    locked = _read_lock(lock_path).get(category)
    expected, source, fix = None, "", "rerun to download it again"
    if pinned:
        expected, source = pinned, "pinned in anomaly_utils/download.py"
        fix += "; if the mismatch persists, check the MVTec AD page " + MVTEC_PAGE
    elif locked:
        expected, source = locked["sha256"], f"recorded in '{lock_path}' by the first download"
        fix += (f"; if the mismatch persists the server sends a different file: delete the "
                f"'{category}' entry of '{lock_path}' only if you trust it")

    downloads = dest / DOWNLOADS_DIR
    downloads.mkdir(parents=True, exist_ok=True)
    archive = downloads / name
    if archive.is_file():
        print(f"Using the archive already at '{archive}'")
    else:
        try:
            _fetch(url, archive, progress=progress, timeout_s=timeout_s, attempts=attempts)
        finally:
            with contextlib.suppress(OSError):
                downloads.rmdir()  # only when empty: nothing was received
    digest, size = _sha256(archive), archive.stat().st_size
    if expected is not None and digest != expected:
        archive.unlink()
        raise LabError(
            f"archive '{name}' from {url} has SHA-256 {digest}, but {expected} is expected "
            f"({source}); the bad file was deleted", fix=fix)

    try:
        _extract_categories(archive, dest, [f.name for f in missing])
    except LabError:
        archive.unlink(missing_ok=True)
        raise
    entries = _read_lock(lock_path)
    entries[category] = {"url": url, "sha256": digest, "size": size}
    write_json(lock_path, entries)
    archive.unlink()
    with contextlib.suppress(OSError):
        downloads.rmdir()


def mvtec_layout_problems(category_dir: str | os.PathLike) -> list[str]:
    """List what keeps ``category_dir`` from having the MVTec AD layout (empty: complete).

    Expected: ``train/good`` and ``test/good`` each holding at least one file, and for
    every defect folder ``test/<defect>`` a folder ``ground_truth/<defect>``.

    Example:
        >>> mvtec_layout_problems("/nonexistent/carpet")
        ["'/nonexistent/carpet' does not exist"]
    """
    root = Path(category_dir)
    if not root.is_dir():
        return [f"'{root}' does not exist"]
    problems = [f"'{root / sub}' is missing or empty" for sub in ("train/good", "test/good")
                if not _has_file(root / sub)]
    test = root / "test"
    defects = sorted(p.name for p in test.iterdir() if p.is_dir() and p.name != "good") \
        if test.is_dir() else []
    problems += [f"'{root / 'ground_truth' / d}' is missing (test/{d} has no masks)"
                 for d in defects if not (root / "ground_truth" / d).is_dir()]
    return problems


def _validate(
    category: object, base_url: object, timeout_s: float, attempts: int
) -> tuple[str, ...]:
    """Check the arguments; return the category names the call must provide."""
    if category == "all":
        wanted: tuple[str, ...] = MVTEC_CATEGORIES
    elif isinstance(category, str) and category in MVTEC_CATEGORIES:
        wanted = (category,)
    else:
        raise ParameterError(f"unknown MVTec AD category {category!r}",
                             fix="use one of: " + ", ".join(MVTEC_CATEGORIES) + ", all")
    if base_url is not None and not (
            isinstance(base_url, str) and re.match(r"https?://[^/]", base_url)):
        raise ParameterError(f"base_url {base_url!r} is not an http(s) URL",
                             fix="pass e.g. --base-url https://mirror.example.org/mvtec/")
    if not timeout_s > 0:
        raise ParameterError(f"timeout_s must be > 0, got {timeout_s}")
    if not (isinstance(attempts, int) and attempts >= 1):
        raise ParameterError(f"attempts must be an integer >= 1, got {attempts!r}")
    return wanted


def _has_file(folder: Path) -> bool:
    return folder.is_dir() and any(p.is_file() for p in folder.iterdir())


def _is_complete(folder: Path) -> bool:
    """True for a complete category folder; DataError for an existing incomplete one."""
    if not folder.exists():
        return False
    problems = mvtec_layout_problems(folder)
    if problems:
        raise DataError(
            f"'{folder}' exists but is not a complete MVTec AD category: {'; '.join(problems)}",
            fix=f"delete or move '{folder}' and rerun the download")
    return True


def _read_lock(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        entries = json.loads(path.read_text())
        if not isinstance(entries, dict) or not all(
                isinstance(e, dict) and isinstance(e.get("sha256"), str)
                for e in entries.values()):
            raise ValueError("expected {category: {url, sha256, size}}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"lock file '{path}' is corrupt ({exc})",
                        fix="delete it; the next download records the hashes again") from exc
    return entries


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _network_error(url: str, part: Path, reason: str) -> LabError:
    kept = f"; the partial file '{part}' is kept" if part.is_file() else ""
    return LabError(
        f"downloading {url} failed: {reason}{kept}",
        fix="check the network connection and rerun the same command"
            + (" to resume" if kept else "") + " (or pass --base-url of a mirror)")


def _fetch(url: str, archive: Path, *, progress: bool, timeout_s: float, attempts: int) -> None:
    """Stream ``url`` to ``archive`` through ``archive.part``, resuming and retrying."""
    part = archive.with_name(archive.name + ".part")
    for attempt in range(1, attempts + 1):
        try:
            if _fetch_once(url, part, progress=progress, timeout_s=timeout_s):
                os.replace(part, archive)
                return
            reason = "the connection closed before the whole file arrived"
        except urllib.error.HTTPError as exc:
            if exc.code in _GONE:
                raise LabError(
                    f"the server answered HTTP {exc.code} {exc.reason} for {url}",
                    fix=f"the link may have moved: download '{archive.name}' by hand from "
                        f"{MVTEC_PAGE}, put it at '{archive}' and rerun (it is verified and "
                        "extracted), or pass --base-url of a mirror") from exc
            reason = f"HTTP {exc.code} {exc.reason}"
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise LabError(f"no space left on the device while writing '{part}'",
                               fix="free disk space and rerun to resume") from exc
            reason = _describe(exc)
        except http.client.HTTPException as exc:
            reason = f"{type(exc).__name__}: {exc}"
        if attempt < attempts:
            verb = "resuming" if part.is_file() else "retrying"
            print(f"Download of {url} failed ({reason}); {verb} "
                  f"(attempt {attempt + 1} of {attempts})", file=sys.stderr)
            time.sleep(_RETRY_WAIT_S * attempt)
    raise _network_error(url, part, f"{reason} (after {attempts} attempts)")


def _describe(exc: OSError) -> str:
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(exc, urllib.error.URLError):
        return f"cannot connect ({exc.reason})"
    return f"{type(exc).__name__}: {exc}"


def _fetch_once(url: str, part: Path, *, progress: bool, timeout_s: float) -> bool:
    """One HTTP request; append to ``part``. True when the file is complete."""
    offset = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        if exc.code == 416:
            part.unlink()
            raise http.client.HTTPException(
                f"the server refused to resume at byte {offset} (HTTP 416); restarting") from exc
        raise
    with response:
        total, offset = _resume_point(response, offset, part)
        if total is not None:
            _check_space(part.parent, total - offset + total)
        mode = "ab" if offset else "wb"
        received = offset
        with open(part, mode) as out, _progress_bar(part.name[:-5], total, offset,
                                                    progress) as bar:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                received += len(chunk)
                bar(len(chunk))
    return total is None or received == total


def _resume_point(
    response: http.client.HTTPResponse, offset: int, part: Path
) -> tuple[int | None, int]:
    """Return (total size or None, byte offset the body starts at) from the response.

    A 206 answer that does not start at ``offset`` deletes ``part`` so the retry restarts.
    """
    if response.status == 206:
        match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)",
                             response.headers.get("Content-Range", "").strip())
        if match and int(match.group(1)) == offset:
            total = match.group(3)
            return (int(total) if total != "*" else None), offset
        part.unlink()
        raise http.client.HTTPException(
            f"unexpected Content-Range {response.headers.get('Content-Range')!r} "
            f"for a resume at byte {offset}")
    length = response.headers.get("Content-Length")
    return (int(length) if length and length.isdigit() else None), 0


def _check_space(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise LabError(
            f"'{folder}' has {free / 2**30:.1f} GiB free, but downloading and extracting "
            f"needs about {needed / 2**30:.1f} GiB",
            fix="free disk space or pass another --dest")


@contextlib.contextmanager
def _progress_bar(name: str, total: int | None, initial: int, enabled: bool) -> Iterator:
    """Yield ``update(n_bytes)``; draws a tqdm bar on stderr when ``enabled``."""
    if not enabled:
        yield lambda n: None
        return
    from tqdm import tqdm

    with tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
              desc=name, file=sys.stderr, mininterval=0.5) as bar:
        yield bar.update


def _member_filter(member: tarfile.TarInfo, dest_path: str) -> tarfile.TarInfo:
    """``tarfile.data_filter`` plus refusal of absolute names and ``..`` components.

    The ``data`` filter alone strips a leading ``/`` and allows ``a/../b`` when it stays
    inside; an MVTec archive has neither, so their presence means a tampered archive.
    """
    if member.name.startswith(("/", os.sep)) or os.path.isabs(member.name):
        raise tarfile.AbsolutePathError(member)
    if ".." in re.split(r"[/\\]", member.name):
        raise tarfile.OutsideDestinationError(member, os.path.join(dest_path, member.name))
    return tarfile.data_filter(member, dest_path)


def _extract_categories(archive: Path, dest: Path, categories: list[str]) -> None:
    """Safely extract ``archive`` into a temporary folder; move ``categories`` into dest."""
    if not hasattr(tarfile, "data_filter"):
        raise LabError(f"this Python ({sys.version.split()[0]}) lacks tarfile's extraction "
                       "filters, so archives cannot be extracted safely",
                       fix="use Python 3.11.4 or newer")
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                tar.errorlevel = 1
                tar.extractall(staging, filter=_member_filter)
        except tarfile.FilterError as exc:
            raise LabError(
                f"archive '{archive.name}' holds an unsafe member "
                f"'{exc.tarinfo.name}' ({exc}); nothing was extracted into '{dest}'",
                fix="the archive was deleted; rerun to download it again, and if this "
                    "repeats, use only the official archive from " + MVTEC_PAGE) from exc
        except (tarfile.TarError, EOFError, lzma.LZMAError, zlib.error) as exc:
            raise LabError(f"archive '{archive.name}' is corrupt or truncated ({exc})",
                           fix="the archive was deleted; rerun to download it again") from exc
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise LabError(f"no space left on the device while extracting into '{dest}'",
                               fix="free disk space and rerun") from exc
            raise
        root = _category_root(staging, categories, archive)
        for name in categories:
            problems = mvtec_layout_problems(root / name)
            if problems:
                raise DataError(
                    f"archive '{archive.name}' does not hold the MVTec AD layout for "
                    f"'{name}': {'; '.join(problems)}",
                    fix="the archive was deleted; rerun to download it again")
        for name in categories:
            os.replace(root / name, dest / name)
        for extra in root.iterdir():
            # Keep MVTec's license.txt / readme.txt beside the categories.
            if extra.is_file() and not extra.is_symlink() and not (dest / extra.name).exists():
                os.replace(extra, dest / extra.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _category_root(staging: Path, categories: list[str], archive: Path) -> Path:
    """The folder inside ``staging`` holding the category folders (top or one level down)."""
    if any((staging / name).is_dir() for name in categories):
        return staging
    subdirs = [p for p in staging.iterdir() if p.is_dir()]
    if len(subdirs) == 1 and any((subdirs[0] / name).is_dir() for name in categories):
        return subdirs[0]
    found = sorted(p.name for p in staging.iterdir())
    raise DataError(f"archive '{archive.name}' holds {found}, not the category folders "
                    f"{categories}", fix="the archive was deleted; rerun to download it again")
