"""Weight files: a local path, or a hub file or URL fetched into the cache on first use, checked
against an optional SHA-256 and moved aside when it is damaged, so a bad download is never
reused.

No torch here: only files, hashes and downloads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from generation.errors import BadRequest, WeightsNotFound
from generation.models_config import default_cache_dir

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 60
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


def probe(path: Path) -> str | None:
    """A cheap look at whether a weight or config file can be read at all: why it cannot
    (a truncated zip, an HTML page where a checkpoint should be), or None when it looks whole.
    Files of unknown kinds are not judged."""
    suffix = path.suffix.lower()
    try:
        with path.open("rb") as file:
            head = file.read(16)
        if suffix in (".ckpt", ".pt", ".pth", ".bin"):
            if zipfile.is_zipfile(path):
                return None
            if head.startswith(b"PK"):
                return "a truncated zip archive"
            # torch's legacy format is a pickle: protocol 2+ streams start with 0x80.
            return None if head[:1] == b"\x80" else "not a torch checkpoint"
        if suffix == ".safetensors":
            size = path.stat().st_size
            header = int.from_bytes(head[:8], "little")
            if len(head) < 8 or header + 8 > size:
                return "a truncated safetensors file"
            with path.open("rb") as file:
                file.seek(8)
                json.loads(file.read(header))
            return None
        if suffix in (".yaml", ".yml") and head.lstrip().startswith(b"<"):
            return "an HTML page, not YAML"
    except (OSError, ValueError) as error:
        return f"unreadable ({type(error).__name__})"
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


def _download(url: str, target: Path, *, what: str, how_to_get: str) -> None:
    log.info("downloading %s from %s into %s", what, url, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "clip-imagine"})
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
            expected = int(response.headers.get("Content-Length") or 0)
            received, last_log = 0, time.monotonic()
            with partial.open("wb") as out:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    received += len(chunk)
                    if time.monotonic() - last_log >= PROGRESS_EVERY_S:
                        last_log = time.monotonic()
                        log.info("%s: %s", what, _progress(received, expected))
        if expected and received != expected:
            raise OSError(f"the connection ended after {received} of {expected} bytes")
        # Rename only a complete file, so an interrupted download is never mistaken for one.
        partial.replace(target)
    except (OSError, urllib.error.URLError) as error:
        partial.unlink(missing_ok=True)
        raise WeightsNotFound(
            f"{what} could not be downloaded from {url} ({error}). {how_to_get} "
            f"Or place the file at {target}."
        ) from None
    log.info("downloaded %s (%s)", what, _megabytes(received))


def _progress(received: int, expected: int) -> str:
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
    try:
        path = Path(hf_hub_download(repo_id, filename, cache_dir=hub_cache))
    except Exception as error:  # noqa: BLE001 - hub errors are many types; all mean "missing"
        raise WeightsNotFound(
            f"{what} could not be downloaded from the Hugging Face Hub ({spec}: "
            f"{type(error).__name__}). {how_to_get}"
        ) from None
    if sha256 and not matches(path, sha256):
        moved = quarantine(path)
        raise DamagedWeights(
            f"{what} downloaded from the Hugging Face Hub ({spec}) does not have the sha256 the "
            f"models file gives ({sha256[:12]}…); it was moved aside to {moved}. Check the "
            f"sha256 (the file may have changed on the hub)."
        )
    return path
