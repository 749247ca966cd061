"""Checked, resumable downloads with the standard library only (urllib, hashlib).

:func:`fetch_file` downloads one file from a list of mirrors into a cache directory:

* bytes go to ``<name>.part`` and the file is renamed into place (``os.replace``) only after its
  SHA-256 matches, so a file under its final name is always complete and verified;
* a ``.part`` left by an interrupted transfer is continued with an HTTP ``Range`` request; if the
  server ignores the range (answers 200) or the range does not fit, the transfer restarts from
  byte 0;
* a transfer that ends early (fewer bytes than ``Content-Length``) is retried, resuming;
* a checksum mismatch deletes the ``.part`` and caches nothing;
* when every mirror fails, :class:`DownloadError` lists each mirror with its error.

:func:`download_mnist` uses it for the four MNIST archives.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

__all__ = [
    "ChecksumError",
    "DownloadError",
    "MNIST_FILES",
    "MNIST_MIRRORS",
    "MNIST_SHA256",
    "default_cache_dir",
    "download_mnist",
    "fetch_file",
    "sha256_file",
]

MNIST_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

# SHA-256 of the four original MNIST archives (the .gz files as served by the mirrors above;
# sizes 9,912,422 / 28,881 / 1,648,877 / 4,542 bytes). We use SHA-256, not MD5: these are the
# values TensorFlow Datasets and many independent projects pin for these files (cross-checked
# across several of them; not re-computed here, as this code was written offline). torchvision
# pins the same files by MD5 (f68b3c2d..., d53e105e..., 9fb629c4..., ec29112d...).
MNIST_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte.gz": (
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"
    ),
    "train-labels-idx1-ubyte.gz": (
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"
    ),
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
MNIST_FILES: tuple[str, ...] = tuple(MNIST_SHA256)

_CHUNK = 1 << 16
_USER_AGENT = "ddchm-data/0.1 (+python urllib)"


class DownloadError(RuntimeError):
    """Every mirror failed; the message lists each mirror and its error."""


class ChecksumError(DownloadError):
    """A mirror delivered a file whose SHA-256 is not the expected one; nothing was cached.

    A subclass of DownloadError, raised instead of it when at least one mirror served a complete
    file with the wrong hash (the message still lists every mirror).
    """


class _Retry(Exception):
    """A transient failure (short read, timeout, bad range): try this mirror again."""


def default_cache_dir(name: str = "mnist") -> Path:
    """``$DDCHM_CACHE/<name>`` if the variable is set, else ``~/.cache/ddchm/<name>``."""
    root = os.environ.get("DDCHM_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "ddchm"
    return base / name


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _content_range_start(value: str | None) -> tuple[int, int | None] | None:
    """Parse ``Content-Range: bytes START-END/TOTAL`` into (START, TOTAL or None)."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value or "")
    if match is None:
        return None
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), total


def _transfer(
    url: str,
    part: Path,
    timeout: float,
    progress: Callable[[str, int, int | None], None] | None,
) -> None:
    """One HTTP request that appends to (or restarts) ``part`` until the body is complete.

    Raises _Retry for failures worth another attempt; the ``.part`` is kept so that the next
    attempt resumes. Other errors (HTTP 404, refused connection...) propagate.
    """
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:
            # Requested range not satisfiable: the .part is stale or too long; start over.
            part.unlink()
            raise _Retry(f"server refused to resume at byte {offset}; restarting") from error
        raise
    with response:
        status = response.status
        if status == 206 and offset:
            parsed = _content_range_start(response.headers.get("Content-Range"))
            if parsed is None or parsed[0] != offset:
                part.unlink()
                raise _Retry(
                    f"server answered an unexpected range "
                    f"({response.headers.get('Content-Range')!r}); restarting"
                )
            total = parsed[1]
            mode = "ab"
        elif status == 200:
            # No resume (fresh start, or the server ignored Range): write from byte 0.
            offset = 0
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            mode = "wb"
        else:
            raise _Retry(f"unexpected HTTP status {status}")
        received = offset
        with open(part, mode) as handle:
            try:
                while chunk := response.read(_CHUNK):
                    handle.write(chunk)
                    received += len(chunk)
                    if progress is not None:
                        progress(part.name[: -len(".part")], received, total)
            except (TimeoutError, http.client.IncompleteRead, ConnectionError) as error:
                raise _Retry(f"transfer interrupted after {received} bytes ({error})") from error
    if total is not None and received < total:
        raise _Retry(f"connection closed after {received} of {total} bytes")


def fetch_file(
    name: str,
    mirrors: Sequence[str],
    dest_dir: str | os.PathLike,
    sha256: str | None,
    *,
    timeout: float = 30.0,
    attempts: int = 3,
    retry_wait: float = 1.0,
    progress: Callable[[str, int, int | None], None] | None = None,
) -> Path:
    """Download ``name`` from the first mirror that delivers it intact; return its path.

    Each mirror URL is joined with ``name`` (``mirror.rstrip('/') + '/' + name``). A file already
    in ``dest_dir`` with the right hash is reused without any network access. ``attempts`` is the
    number of tries per mirror for transient failures (each resumes the ``.part``);
    ``retry_wait`` seconds pass between them. ``sha256=None`` skips the check (not recommended).

    Raises DownloadError listing every mirror and its error if none succeeds, or its subclass
    ChecksumError if some mirror served a complete file with the wrong hash; either way nothing
    is cached under ``name`` and no ``.part`` of a wrong file is left.
    """
    if not mirrors:
        raise ValueError("mirrors: expected at least one mirror URL")
    if attempts < 1:
        raise ValueError(f"attempts: expected an integer >= 1, got {attempts}")
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / name
    part = dest_dir / (name + ".part")
    expected = sha256.lower() if sha256 else None
    if dest.exists():
        if expected is None or sha256_file(dest) == expected:
            return dest
        dest.unlink()  # a stale or damaged copy; fetch it again
    failures: list[str] = []
    checksum_failed = False
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + name
        last_error: str | None = None
        for attempt in range(attempts):
            if attempt and retry_wait > 0:
                time.sleep(retry_wait)
            resumed = part.exists() and part.stat().st_size > 0
            try:
                _transfer(url, part, timeout, progress)
            except _Retry as error:
                last_error = str(error)
                continue
            except urllib.error.HTTPError as error:
                last_error = f"HTTP {error.code} {error.reason}"
                break  # 404 and the like: this mirror does not have it
            except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
                last_error = f"{type(error).__name__}: {getattr(error, 'reason', error)}"
                break  # not transient (refused, 404, DNS...): next mirror
            actual = sha256_file(part)
            if expected is None or actual == expected:
                os.replace(part, dest)
                return dest
            part.unlink()
            checksum_failed = True
            last_error = f"ChecksumError: SHA-256 {actual} does not match expected {expected}"
            if not resumed:
                break  # a clean full transfer is wrong: this mirror serves a bad file
            # the mismatch may come from a stale .part we resumed: one more try from byte 0
        failures.append(f"  {url}: {last_error}")
    if part.exists() and part.stat().st_size == 0:
        part.unlink()
    error_type = ChecksumError if checksum_failed else DownloadError
    raise error_type(
        f"could not download {name} from any of {len(mirrors)} mirror(s):\n"
        + "\n".join(failures)
        + (f"\nA partial file {part} was kept; the next call resumes it." if part.exists() else "")
    )


def download_mnist(
    cache_dir: str | os.PathLike | None = None,
    *,
    mirrors: Sequence[str] = MNIST_MIRRORS,
    hashes: Mapping[str, str] = MNIST_SHA256,
    timeout: float = 30.0,
    attempts: int = 3,
    retry_wait: float = 1.0,
    progress: Callable[[str, int, int | None], None] | None = None,
) -> Path:
    """Download the four MNIST archives into ``cache_dir`` and return that directory.

    ``cache_dir`` defaults to :func:`default_cache_dir` (``~/.cache/ddchm/mnist``, or
    ``$DDCHM_CACHE/mnist``). ``hashes`` maps file name to SHA-256; its keys are the files
    fetched (tests pass their own table). Files already present and verified are not fetched
    again. ``progress(name, bytes_so_far, total_or_None)`` is called as data arrives.
    """
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir("mnist")
    for name, digest in hashes.items():
        fetch_file(
            name,
            mirrors,
            directory,
            digest,
            timeout=timeout,
            attempts=attempts,
            retry_wait=retry_wait,
            progress=progress,
        )
    return directory
