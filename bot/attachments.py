"""Image attachments (init image, image prompt): download, check, keep.

A file from a user is checked in order, stopping at the first problem with a message that says
what to do:

1. the size Discord declares and the content type it reports (before downloading anything);
2. the address: only Discord's CDN over https (``DISCORD_CDN_ORIGINS``), and no redirect
   anywhere (a redirect is refused, not followed), so a user cannot make the bot fetch from
   another server;
3. the download itself, streamed and cut off as soon as it passes the size limit;
4. the first bytes: they must be a PNG, JPEG, WebP or GIF signature, whatever the name says;
5. decoding with Pillow in a worker thread: the pixel count is checked from the header before
   any pixel is decoded (a decompression bomb is a small file that claims a huge image), then
   the image is fully decoded so a truncated or corrupt file is caught now, not in the GPU job.

The accepted file is saved under the data folder with a random name, so the job row can point
at it and the job can be rebuilt after a restart. The caller claims the path before it is
written (``fetch_image(claim=...)``, see ``bot.retention.FileClaims``) and owns the file from
then on: it hands it to a job or deletes it (``discard``, ``discard_unless_used``).
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiohttp
import aiosqlite
import yarl
from PIL import Image, UnidentifiedImageError

import db

log = logging.getLogger(__name__)

# Where Discord serves attachments. Only these are downloaded from (over https).
DISCORD_CDN_ORIGINS = ("https://cdn.discordapp.com", "https://media.discordapp.net")

ALLOWED_CONTENT_TYPES = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/webp": "webp",
    "image/gif": "gif",
}
PIL_FORMATS = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp", "GIF": "gif"}
EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp", "gif": ".gif"}
CHUNK = 64 * 1024


class AttachmentError(Exception):
    """A file was refused; ``str(error)`` is the message for the user."""


class AttachmentLike(Protocol):
    """What is needed of an attachment (discord.Attachment fits)."""

    url: str
    filename: str
    size: int
    content_type: str | None


@dataclass(frozen=True)
class CheckedImage:
    path: Path
    format: str  # png | jpeg | webp | gif
    width: int
    height: int
    size: int  # bytes


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


def check_declared(attachment: AttachmentLike, *, max_bytes: int, what: str) -> None:
    """Refuse by what Discord says about the file, before downloading it."""
    if attachment.size > max_bytes:
        raise AttachmentError(
            f"The {what} `{attachment.filename}` is {_mib(attachment.size)}; the limit is "
            f"{_mib(max_bytes)}. Send a smaller image."
        )
    content_type = (attachment.content_type or "").split(";")[0].strip().lower()
    if content_type and content_type not in ALLOWED_CONTENT_TYPES:
        raise AttachmentError(
            f"The {what} `{attachment.filename}` is not an image ({content_type}). "
            "Send a PNG, JPEG, WebP or GIF file."
        )


def check_origin(origin: str) -> str:
    """``origin`` as "scheme://host[:port]" (lower case); ValueError when it is not one."""
    url = yarl.URL(origin.strip().rstrip("/"))
    if url.scheme not in ("https", "http") or not url.host or url.path not in ("", "/"):
        raise ValueError(
            f"{origin!r} is not an origin like https://cdn.discordapp.com (scheme and host, "
            "no path)"
        )
    return str(url.origin()).lower()


def allowed_url(url: str, origins: tuple[str, ...]) -> bool:
    """True when ``url`` lies on one of ``origins`` (scheme, host and port all equal)."""
    try:
        parsed = yarl.URL(url)
        if not parsed.is_absolute() or parsed.host is None:
            return False
        origin = str(parsed.origin()).lower()
    except ValueError:
        return False
    return origin in {check_origin(o) for o in origins}


def sniff_format(data: bytes) -> str | None:
    """The image format from the file's first bytes (its signature), or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


async def download(
    session: aiohttp.ClientSession,
    url: str,
    *,
    max_bytes: int,
    what: str,
    time_limit: float = 30.0,
    origins: tuple[str, ...] = DISCORD_CDN_ORIGINS,
) -> bytes:
    """Stream ``url`` into memory, refusing as soon as more than ``max_bytes`` arrive. Only
    ``origins`` are fetched from, and redirects are not followed."""
    if not allowed_url(url, origins):
        raise AttachmentError(
            f"The {what} is not a file uploaded to Discord. Attach the image to the command."
        )
    too_big = AttachmentError(f"The {what} is larger than {_mib(max_bytes)}. Send a smaller image.")
    try:
        async with session.get(
            url, timeout=aiohttp.ClientTimeout(total=time_limit), allow_redirects=False
        ) as response:
            if 300 <= response.status < 400:
                # Discord's CDN answers attachments directly; a redirect would lead elsewhere.
                raise AttachmentError(
                    f"The {what} could not be downloaded from Discord (it redirected "
                    "elsewhere). Try uploading it again."
                )
            if response.status != 200:
                raise AttachmentError(
                    f"The {what} could not be downloaded (HTTP {response.status}). "
                    "Try uploading it again."
                )
            if response.content_length is not None and response.content_length > max_bytes:
                raise too_big
            buffer = bytearray()
            async for chunk in response.content.iter_chunked(CHUNK):
                buffer += chunk
                if len(buffer) > max_bytes:
                    raise too_big
            return bytes(buffer)
    except (aiohttp.ClientError, TimeoutError):
        raise AttachmentError(
            f"The {what} could not be downloaded. Try uploading it again."
        ) from None


def decode_check(data: bytes, *, max_pixels: int, what: str) -> tuple[str, int, int]:
    """Decode the image fully (call it in a thread); returns (format, width, height)."""
    sniffed = sniff_format(data)
    if sniffed is None:
        raise AttachmentError(
            f"The {what} is not a PNG, JPEG, WebP or GIF image. Send one of those."
        )
    try:
        with warnings.catch_warnings():
            # Pillow warns (rather than fails) between its limit and twice it; make that an error.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise AttachmentError(
                        f"The {what} is {width}×{height} pixels; the limit is "
                        f"{max_pixels:,} pixels. Send a smaller image."
                    )
                fmt = PIL_FORMATS.get(image.format or "")
                if fmt is None:
                    raise AttachmentError(
                        f"The {what} is not a PNG, JPEG, WebP or GIF image. Send one of those."
                    )
                image.load()
    except AttachmentError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise AttachmentError(
            f"The {what} claims to be far too large to decode. Send a smaller image."
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise AttachmentError(
            f"The {what} could not be read as an image; it may be damaged. Send another file."
        ) from None
    if width < 1 or height < 1:
        raise AttachmentError(f"The {what} has no pixels. Send another image.")
    return fmt, width, height


def discard(paths: Sequence[str | os.PathLike[str]]) -> None:
    """Delete stored attachments of a request that was refused (call it in a thread)."""
    for path in paths:
        Path(path).unlink(missing_ok=True)


async def discard_unless_used(conn: aiosqlite.Connection, paths: Sequence[str]) -> list[str]:
    """After a request failed part-way (an error, a cancel): delete those of its saved
    attachments that no job row names; returns them. When the database cannot say, the files
    are kept (the retention sweep deletes them by age) rather than taken from a job."""
    if not paths:
        return []
    try:
        in_use = await db.files_in_use(conn)
    except Exception:
        log.warning("could not tell whether %d attachment(s) are used; kept", len(paths))
        return []
    return await asyncio.to_thread(_discard_unused, paths, in_use)


def _discard_unused(paths: Sequence[str], in_use: set[str]) -> list[str]:
    used = {os.path.abspath(p) for p in in_use}
    unused = [p for p in paths if os.path.abspath(p) not in used]
    discard(unused)
    return unused


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".part")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not leave half a file behind
        raise


async def fetch_image(
    session: aiohttp.ClientSession,
    attachment: AttachmentLike,
    dest_dir: Path,
    *,
    max_bytes: int,
    max_pixels: int,
    what: str = "image",
    origins: tuple[str, ...] = DISCORD_CDN_ORIGINS,
    claim: Callable[[Path], None] | None = None,
) -> CheckedImage:
    """Check, download, decode and save one attachment; raises AttachmentError. ``claim`` is
    called with the file's path before it is written (``FileClaims``: from that moment the
    caller owns the file, even when this is cancelled while writing)."""
    check_declared(attachment, max_bytes=max_bytes, what=what)
    data = await download(session, attachment.url, max_bytes=max_bytes, what=what, origins=origins)
    fmt, width, height = await asyncio.to_thread(
        decode_check, data, max_pixels=max_pixels, what=what
    )
    path = dest_dir / f"{uuid.uuid4().hex}{EXTENSIONS[fmt]}"
    if claim is not None:
        claim(path)
    writing = asyncio.ensure_future(asyncio.to_thread(_write, path, data))
    try:
        await asyncio.shield(writing)
    except asyncio.CancelledError:
        # A thread cannot be stopped: let the write end, then take its file back (the caller's
        # clean-up may already have run, before the file existed).
        await asyncio.wait([writing])
        await asyncio.to_thread(discard, [path])
        raise
    return CheckedImage(path=path, format=fmt, width=width, height=height, size=len(data))
