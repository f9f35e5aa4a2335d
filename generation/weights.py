"""Weight files: a local path, or a hub file or URL fetched into the cache on first use, checked
against an optional SHA-256 and moved aside when it is damaged, so a bad download is never
reused.

Hub files (hf://) come through huggingface_hub, which resumes and locks on its own. URLs come
through requests: the bytes go to ``<file>.part``, an interrupted transfer is retried a few
times and resumed where it stopped (HTTP Range), one process at a time downloads a file (a lock
file beside it; a second one waits and then uses the finished file), and ``.part`` becomes the
file only when it is whole: every byte the server announced, or, when it announced no length,
a file that reads to its end (``probe``). A download that fails for good is one line naming the
URL, the path and what to do; the ``.part`` stays so that the next start resumes it.

No torch here: only files, hashes and downloads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import re
import struct
import threading
import time
import urllib.parse
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

from generation.errors import BadRequest, WeightsNotFound
from generation.models_config import default_cache_dir
from generation.pickle_standins import Skipped

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 60  # the longest silence from the server before a try is given up
CONNECT_TIMEOUT_S = 15
# Waits before each new try of an interrupted download: five tries within half a minute.
RETRY_WAITS_S = (1.0, 3.0, 8.0, 15.0)
# How long a process waits for another one downloading the same file before it gives up.
LOCK_WAIT_S = 3 * 3600.0
# How often a running download logs how far it got.
PROGRESS_EVERY_S = 10.0
QUARANTINE_SUFFIX = ".corrupt"

# Files whose SHA-256 matched in this process: (path, size, mtime_ns, sha256). Hashing
# gigabytes takes seconds, so a cached file is checked once per process, not on every load.
_verified: set[tuple[str, int, int, str]] = set()
_verified_lock = threading.Lock()


class DamagedWeights(WeightsNotFound):
    """A weight file failed its checksum or cannot be read; the message names the file."""


def resolve_weight(
    spec: str,
    *,
    what: str,
    how_to_get: str,
    cache_dir: Path | None = None,
    download: bool = True,
    sha256: str | None = None,
) -> Path:
    """The local file for a weight spec: a local path, or "hf://owner/repo/file" or an http(s)
    URL fetched into the cache on first use. Raises WeightsNotFound, saying where it looked and
    how to get the file, when it is missing and cannot be downloaded; DamagedWeights when it
    does not match ``sha256``."""
    cache_dir = cache_dir or default_cache_dir()
    if spec.startswith("hf://"):
        return _from_hub(
            spec, what=what, how_to_get=how_to_get, cache_dir=cache_dir, download=download,
            sha256=sha256,
        )  # fmt: skip
    if spec.startswith(("http://", "https://")):
        return _from_url(
            spec, what=what, how_to_get=how_to_get, cache_dir=cache_dir, download=download,
            sha256=sha256,
        )  # fmt: skip
    path = Path(spec).expanduser()
    if not path.is_file():
        raise WeightsNotFound(f"{what} not found: no file at {path}. {how_to_get}")
    if sha256 and not matches(path, sha256):
        # The operator's own file: named, never moved.
        raise DamagedWeights(
            f"{what}: {path} does not have the sha256 the models file gives ({sha256[:12]}…); "
            f"replace the file or correct the sha256"
        )
    return path


def url_cache_path(url: str, cache_dir: Path) -> Path:
    """Where a URL's file is kept: a readable name plus a hash of the whole URL (many
    published checkpoints are all called last.ckpt)."""
    parsed = urllib.parse.urlparse(url)
    query_path = urllib.parse.parse_qs(parsed.query).get("p", [""])[0]
    name = Path(query_path or parsed.path).name or "download"
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name)[-80:]
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return cache_dir / "downloads" / f"{digest}-{name}"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def matches(path: Path, sha256: str) -> bool:
    """Whether ``path`` has this SHA-256; a file that matched once in this process (same size
    and modification time) is not hashed again."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, sha256.lower())
    with _verified_lock:
        if key in _verified:
            return True
    if file_sha256(path) != sha256.lower():
        return False
    with _verified_lock:
        _verified.add(key)
    return True


def quarantine(path: Path) -> Path:
    """Move a damaged cached file aside (``<name>.corrupt``, replacing an older one) so the
    next load downloads it again; returns where it went. A hub cache entry is a link to a blob:
    the blob goes aside and the link is removed."""
    target = path.resolve()
    moved = target.with_name(target.name + QUARANTINE_SUFFIX)
    target.replace(moved)
    if path.is_symlink():
        path.unlink()
    log.warning("moved the damaged file %s aside to %s", path, moved)
    return moved


# The kinds of file ``probe`` can judge whole or cut.
_JUDGED_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".safetensors")


def probe(path: Path, *, suffix: str | None = None) -> str | None:
    """A cheap look at whether a weight or config file can be read to its end: why it cannot
    (a truncated zip, safetensors or legacy torch file, an HTML page where a checkpoint should
    be), or None when it looks whole. ``suffix`` names the kind when the path's own does not
    (a ``.part``). Files of unknown kinds are not judged."""
    suffix = (suffix if suffix is not None else path.suffix).lower()
    try:
        with path.open("rb") as file:
            head = file.read(16)
        if suffix in (".ckpt", ".pt", ".pth", ".bin"):
            if zipfile.is_zipfile(path):  # its directory is at the end: a cut file has none
                return None
            if head.startswith(b"PK"):
                return "a truncated zip archive"
            # torch's legacy format is a pickle: protocol 2+ streams start with 0x80.
            if head[:1] != b"\x80":
                return "not a torch checkpoint"
            return _legacy_torch_problem(path)
        if suffix == ".safetensors":
            return _safetensors_problem(path, head)
        if suffix in (".yaml", ".yml") and head.lstrip().startswith(b"<"):
            return "an HTML page, not YAML"
    except (OSError, ValueError) as error:
        return f"unreadable ({type(error).__name__})"
    return None


def _safetensors_problem(path: Path, head: bytes) -> str | None:
    size = path.stat().st_size
    header = int.from_bytes(head[:8], "little")
    if len(head) < 8 or header + 8 > size:
        return "a truncated safetensors file"
    with path.open("rb") as file:
        file.seek(8)
        entries = json.loads(file.read(header))
    ends = [
        entry["data_offsets"][1]
        for name, entry in entries.items()
        if name != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry
    ]
    if 8 + header + max(ends, default=0) > size:
        return "a truncated safetensors file"
    return None


# Bytes per element of the storages torch's legacy format names.
_STORAGE_BYTES = {
    "DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2,
    "LongStorage": 8, "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1,
    "BoolStorage": 1, "ComplexDoubleStorage": 16, "ComplexFloatStorage": 8,
    "UntypedStorage": 1,
}  # fmt: skip


class _Named(Skipped):
    """What the probe's unpickler makes of any global: its name, and nothing it can run."""

    def __init__(self, name: str = "") -> None:
        self.name = name

    def __call__(self, *args: Any, **kwargs: Any) -> _Named:
        return _Named()


class _StorageLister(pickle.Unpickler):
    """Reads the pickles of a legacy torch file without building anything: it only notes
    which storages the tensors use and their element size."""

    def __init__(self, file: BinaryIO) -> None:
        super().__init__(file)
        self.element_bytes: dict[str, int] = {}

    def find_class(self, module: str, name: str) -> Any:
        return _Named(name)

    def persistent_load(self, pid: Any) -> Any:
        # ("storage", storage type, key, location, number of elements, ...)
        if isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage":
            kind = getattr(pid[1], "name", "")
            self.element_bytes[str(pid[2])] = _STORAGE_BYTES.get(kind, 0)
        return _Named()


def _legacy_torch_problem(path: Path) -> str | None:
    """torch's legacy (non-zip) layout: magic number, protocol, system info, the object, the
    list of storage keys, then each storage as an 8-byte element count and its bytes. Walk it
    (reading the pickles only, seeking over the data) and say if the file ends early."""
    size = path.stat().st_size
    with path.open("rb") as file:
        try:
            for _ in range(3):  # magic number, protocol version, system info: plain values
                _StorageLister(file).load()
            lister = _StorageLister(file)
            lister.load()
            keys = _StorageLister(file).load()
            if not isinstance(keys, list):
                return "not a torch checkpoint"
            for key in keys:
                count_bytes = file.read(8)
                if len(count_bytes) < 8:
                    return "a truncated torch checkpoint"
                (count,) = struct.unpack("<q", count_bytes)
                element = lister.element_bytes.get(str(key), 0)
                if count < 0 or element == 0:
                    return None  # a layout this probe does not know: not judged
                file.seek(count * element, 1)
                if file.tell() > size:
                    return "a truncated torch checkpoint"
        except (EOFError, pickle.UnpicklingError, struct.error, ValueError, TypeError):
            return "a truncated torch checkpoint"
        except RecursionError:
            return "not a torch checkpoint"
    return None


def in_cache(path: Path, cache_dir: Path) -> bool:
    """Whether ``path`` is a file this program downloaded (and may move aside)."""
    try:
        return path.resolve().is_relative_to(cache_dir.resolve()) or path.is_relative_to(cache_dir)
    except OSError:
        return False


def _from_url(
    url: str, *, what: str, how_to_get: str, cache_dir: Path, download: bool, sha256: str | None
) -> Path:
    target = url_cache_path(url, cache_dir)
    if target.is_file():
        if not sha256 or matches(target, sha256):
            return target
        moved = quarantine(target)
        if not download:
            raise DamagedWeights(
                f"{what}: the cached file {target} does not have the sha256 the models file "
                f"gives and was moved aside to {moved}; downloads are off, so download {url} to "
                f"{target} yourself"
            )
        log.warning("%s: the cached copy failed its sha256; downloading it again", what)
    elif not download:
        raise WeightsNotFound(
            f"{what} is not in the cache ({target}) and downloads are off. {how_to_get} "
            f"Download {url} to that path, or set its local path in the models file."
        )
    _download(url, target, what=what, how_to_get=how_to_get)
    if sha256 and not matches(target, sha256):
        moved = quarantine(target)
        raise DamagedWeights(
            f"{what} downloaded from {url} does not have the sha256 the models file gives "
            f"({sha256[:12]}…); it was moved aside to {moved}. The server may have sent an "
            f"error page or a different file: check the URL and the sha256, then start again."
        )
    return target


class _Interrupted(Exception):
    """A try that may succeed when repeated (a cut connection, a timeout, a 5xx answer)."""


class _Refused(Exception):
    """An answer that repeating will not change (404, 403, ...) or a local fault (disk full)."""


def _download(url: str, target: Path, *, what: str, how_to_get: str) -> None:
    """Fetch ``url`` into ``target`` through ``target.part``, one process at a time."""
    from filelock import FileLock, Timeout

    target.parent.mkdir(parents=True, exist_ok=True)
    # Lock files stay (removing one races with a process about to take it), so they live
    # apart from the downloaded files: <cache>/locks/ beside <cache>/downloads/.
    locks = target.parent.parent / "locks"
    locks.mkdir(exist_ok=True)
    lock = FileLock(str(locks / f"{target.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("%s: another process is downloading %s; waiting for it", what, target)
        try:
            lock.acquire(timeout=LOCK_WAIT_S)
        except Timeout:
            raise WeightsNotFound(
                f"{what}: another process has been downloading {target} for over "
                f"{LOCK_WAIT_S / 3600:g} h; stop it, or delete {lock.lock_file}, then start again"
            ) from None
    try:
        if target.is_file():  # the other process finished it
            return
        _download_unlocked(url, target, what=what, how_to_get=how_to_get)
    finally:
        lock.release()


def _download_unlocked(url: str, target: Path, *, what: str, how_to_get: str) -> None:
    import requests

    partial = target.with_name(target.name + ".part")
    log.info("downloading %s from %s into %s", what, url, target)
    tries = len(RETRY_WAITS_S) + 1
    with requests.Session() as session:
        session.headers["User-Agent"] = "clip-imagine"
        for attempt in range(1, tries + 1):
            try:
                total = _fetch(session, url, partial, what)
                _check_complete(partial, total, target)
                break
            except _Refused as error:
                partial.unlink(missing_ok=True)
                raise WeightsNotFound(
                    f"{what} could not be downloaded from {url} into {target} ({error}). "
                    f"{how_to_get} Or place the file at {target}."
                ) from None
            except _Interrupted as error:
                if attempt == tries:
                    kept = partial.stat().st_size if partial.is_file() else 0
                    resume = (
                        f"{_megabytes(kept)} are kept in {partial}, and the next start resumes "
                        f"from there"
                        if kept
                        else "nothing was kept"
                    )
                    raise WeightsNotFound(
                        f"{what} could not be downloaded from {url} into {target}: {error}, "
                        f"{tries} tries; {resume}. Check the network and the URL, then start "
                        f"again, or place the file at {target} yourself. {how_to_get}"
                    ) from None
                wait = RETRY_WAITS_S[attempt - 1]
                log.warning(
                    "%s: the download from %s was interrupted (%s); try %d of %d in %g s",
                    what, url, error, attempt + 1, tries, wait,
                )  # fmt: skip
                time.sleep(wait)
    # Rename only a complete file, so an interrupted download is never mistaken for one.
    partial.replace(target)
    log.info("downloaded %s (%s) into %s", what, _megabytes(target.stat().st_size), target)


def _fetch(session: Any, url: str, partial: Path, what: str) -> int | None:
    """One try: append to ``partial`` from where it stops (HTTP Range). Returns the file's
    whole size when the server announced one."""
    import requests

    have = partial.stat().st_size if partial.is_file() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        with session.get(
            url, headers=headers, stream=True, timeout=(CONNECT_TIMEOUT_S, DOWNLOAD_TIMEOUT_S)
        ) as response:
            total = _start_or_resume(response, partial, have)
            if total is not None and partial.is_file() and partial.stat().st_size == total:
                return total  # resumed a file that was already whole
            received = partial.stat().st_size if partial.is_file() else 0
            started, last_log = time.monotonic(), time.monotonic()
            with partial.open("ab") as out:
                # Small pieces: a cut connection loses the piece being read, never more.
                for chunk in response.iter_content(1 << 16):
                    _write(out, chunk, partial)
                    received += len(chunk)
                    if time.monotonic() - last_log >= PROGRESS_EVERY_S:
                        last_log = time.monotonic()
                        rate = (received - have) / max(1e-9, last_log - started)
                        log.info("%s: %s, %s/s", what, _progress(received, total), _megabytes(rate))
            return total
    except requests.HTTPError as error:
        status = error.response.status_code if error.response is not None else 0
        if status == 429 or status >= 500:
            raise _Interrupted(f"the server answered {status}") from None
        raise _Refused(f"the server answered {status}") from None
    except (requests.ConnectionError, requests.Timeout) as error:
        raise _Interrupted(_short(error, "the connection failed or went silent")) from None
    except requests.RequestException as error:  # a cut body (ChunkedEncodingError), ...
        raise _Interrupted(_short(error, "the transfer broke off")) from None


def _start_or_resume(response: Any, partial: Path, have: int) -> int | None:
    """Check the answer to a (ranged) request and make ``partial`` ready for its body: kept
    and appended to when the server resumes, emptied when it sends the whole file again."""
    if response.status_code == 416 and have:
        # Nothing after ``have``: whole if the server says it is that long, else start over.
        total = _content_range_total(response.headers.get("Content-Range", ""))
        if total == have:
            return total
        partial.unlink()
        raise _Interrupted("the server could not resume the partial file; starting over")
    response.raise_for_status()
    length = response.headers.get("Content-Length")
    encoded = response.headers.get("Content-Encoding", "identity") not in ("", "identity")
    if response.status_code == 206 and have:
        start = _content_range_start(response.headers.get("Content-Range", ""))
        if start != have:
            partial.unlink()
            raise _Interrupted("the server resumed at the wrong place; starting over")
        total = _content_range_total(response.headers.get("Content-Range", ""))
        return None if encoded else total
    if have:
        log.info("the server does not resume downloads; downloading %s again", partial.name)
    partial.unlink(missing_ok=True)
    partial.touch()
    return int(length) if length and length.isdigit() and not encoded else None


def _check_complete(partial: Path, total: int | None, target: Path) -> None:
    """Raise _Interrupted unless ``partial`` holds the whole file."""
    size = partial.stat().st_size
    if total is not None:
        if size != total:
            raise _Interrupted(f"the connection ended after {size} of {total} bytes")
        return
    # No length announced: the body ended when the connection did, so a cut looks like the
    # end. Read the file's own structure instead (and start over if it is cut).
    reason = probe(partial, suffix=target.suffix)
    if reason is not None:
        partial.unlink()
        raise _Interrupted(f"the server sent no length and the file is {reason}")
    if target.suffix.lower() not in _JUDGED_SUFFIXES:
        log.warning(
            "%s: the server sent no length, so the file cannot be checked for being whole; "
            "give its sha256 in the models file to be sure",
            target.name,
        )


def _write(out: BinaryIO, chunk: bytes, partial: Path) -> None:
    try:
        out.write(chunk)
    except OSError as error:  # disk full, read-only cache: retrying will not help
        raise _Refused(f"writing {partial} failed: {error.strerror or error}") from None


def _content_range_start(header: str) -> int | None:
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", header.strip())
    return int(match.group(1)) if match else None


def _content_range_total(header: str) -> int | None:
    match = re.fullmatch(r"bytes (?:\d+-\d+|\*)/(\d+)", header.strip())
    return int(match.group(1)) if match else None


def _short(error: BaseException, fallback: str) -> str:
    """An exception as a few words on one line (requests nests long reprs)."""
    text = " ".join(str(error).split())
    return text[:160] if text else fallback


def _progress(received: int, expected: int | None) -> str:
    if expected:
        return f"{_megabytes(received)} of {_megabytes(expected)} ({100 * received // expected}%)"
    return f"{_megabytes(received)} so far"


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.0f} MB"


def _from_hub(
    spec: str, *, what: str, how_to_get: str, cache_dir: Path, download: bool, sha256: str | None
) -> Path:
    parts = spec.removeprefix("hf://").split("/")
    if len(parts) < 3:
        raise BadRequest(f"{spec!r} is not a hub file: write hf://owner/repo/path/to/file")
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
    from huggingface_hub import hf_hub_download

    hub_cache = cache_dir / "hub"
    cached: Path | None = None
    try:
        cached = Path(
            hf_hub_download(repo_id, filename, cache_dir=hub_cache, local_files_only=True)
        )
    except Exception:  # noqa: BLE001 - not cached yet; the download below says what failed
        if not download:
            raise WeightsNotFound(
                f"{what} ({spec}) is not in the cache {hub_cache} and downloads are off. "
                f"{how_to_get}"
            ) from None
    if cached is not None:
        if not sha256 or matches(cached, sha256):
            return cached
        moved = quarantine(cached)
        if not download:
            raise DamagedWeights(
                f"{what}: the cached file {cached} does not have the sha256 the models file "
                f"gives and was moved aside to {moved}; downloads are off"
            )
    path = _hub_download(repo_id, filename, hub_cache, spec=spec, what=what, how_to_get=how_to_get)
    if sha256 and not matches(path, sha256):
        moved = quarantine(path)
        raise DamagedWeights(
            f"{what} downloaded from the Hugging Face Hub ({spec}) does not have the sha256 the "
            f"models file gives ({sha256[:12]}…); it was moved aside to {moved}. Check the "
            f"sha256 (the file may have changed on the hub)."
        )
    return path


def _hub_download(
    repo_id: str, filename: str, hub_cache: Path, *, spec: str, what: str, how_to_get: str
) -> Path:
    """hf_hub_download (it resumes its own ``.incomplete`` files and locks), tried again after
    a network fault; a file or repository the hub does not have fails at once."""
    import huggingface_hub
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HFValidationError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    tries = len(RETRY_WAITS_S) + 1
    for attempt in range(1, tries + 1):
        try:
            return Path(huggingface_hub.hf_hub_download(repo_id, filename, cache_dir=hub_cache))
        except (
            EntryNotFoundError, GatedRepoError, HFValidationError, RepositoryNotFoundError,
            RevisionNotFoundError,
        ) as error:  # fmt: skip
            raise WeightsNotFound(
                f"{what}: the Hugging Face Hub refused {spec} ({type(error).__name__}): check "
                f"the owner, repository and file name; a gated repository needs `hf auth login` "
                f"and its licence accepted first. {how_to_get}"
            ) from None
        except Exception as error:  # noqa: BLE001 - network faults come in many types
            if attempt == tries:
                raise WeightsNotFound(
                    f"{what} could not be downloaded from the Hugging Face Hub ({spec}) into "
                    f"{hub_cache}: {type(error).__name__}: {_short(error, 'no answer')}, "
                    f"{tries} tries; what arrived is kept and the next start resumes. Check "
                    f"the network (or HF_ENDPOINT), then start again. {how_to_get}"
                ) from None
            wait = RETRY_WAITS_S[attempt - 1]
            log.warning(
                "%s: the download of %s failed (%s); try %d of %d in %g s",
                what, spec, type(error).__name__, attempt + 1, tries, wait,
            )  # fmt: skip
            time.sleep(wait)
    raise AssertionError("unreachable")
