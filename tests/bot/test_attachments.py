"""Attachment checks: declared size and type, streamed size cut-off, signatures, decoding,
decompression bombs, and the saved file."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from PIL import Image

from bot.attachments import (
    DISCORD_CDN_ORIGINS,
    AttachmentError,
    allowed_url,
    check_declared,
    check_origin,
    decode_check,
    fetch_image,
    sniff_format,
)


def png_bytes(width: int = 8, height: int = 6, color: str = "red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (10, 10), "blue").save(buffer, format="JPEG")
    return buffer.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    rows = zlib.compress(b"\x00" * (width + 1) * 4)  # only a few rows: the rest is missing
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    )


@dataclass
class FakeAttachment:
    url: str
    filename: str
    size: int
    content_type: str | None


@pytest.fixture
async def server() -> AsyncIterator[TestServer]:
    files = {
        "ok.png": png_bytes(),
        "photo.jpg": jpeg_bytes(),
        "notes.txt": b"just some text, not an image at all",
        "broken.png": png_bytes()[:40],
        "bomb.png": bomb_png(20000, 20000),
    }

    async def serve(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name == "endless":
            # No Content-Length; keeps sending until the client hangs up.
            response = web.StreamResponse()
            await response.prepare(request)
            for _ in range(10_000):
                await response.write(b"\x89PNG\r\n\x1a\n" + b"\x00" * 65_536)
            return response
        if name == "redirect.png":
            # An "attachment" that sends the bot somewhere else.
            raise web.HTTPFound("http://169.254.169.254/latest/meta-data")
        if name == "local-redirect.png":
            raise web.HTTPFound("/files/ok.png")
        if name not in files:
            raise web.HTTPNotFound()
        return web.Response(body=files[name], content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get("/files/{name}", serve)
    test_server = TestServer(app)
    await test_server.start_server()
    try:
        yield test_server
    finally:
        await test_server.close()


def attachment(
    server: TestServer, name: str, size: int = 100, ctype: str | None = "image/png"
) -> FakeAttachment:
    return FakeAttachment(str(server.make_url(f"/files/{name}")), name, size, ctype)


def listing(folder: Path) -> list[Path]:
    return list(folder.iterdir()) if folder.exists() else []


def origin(server: TestServer) -> tuple[str, ...]:
    """The test server's address, allowed explicitly (as the tests' settings do)."""
    return (str(server.make_url("/").origin()),)


def test_sniff_format() -> None:
    assert sniff_format(png_bytes()) == "png"
    assert sniff_format(jpeg_bytes()) == "jpeg"
    assert sniff_format(b"GIF89a....") == "gif"
    assert sniff_format(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "webp"
    assert sniff_format(b"%PDF-1.7") is None
    assert sniff_format(b"") is None


def test_declared_size_and_type_refused_before_download() -> None:
    big = FakeAttachment("http://x/never-fetched", "huge.png", 9 * 1024 * 1024, "image/png")
    with pytest.raises(AttachmentError, match=r"9\.0 MiB; the limit is 8\.0 MiB"):
        check_declared(big, max_bytes=8 * 1024 * 1024, what="init image")
    pdf = FakeAttachment("http://x/never-fetched", "doc.pdf", 10, "application/pdf")
    with pytest.raises(AttachmentError, match="not an image"):
        check_declared(pdf, max_bytes=1000, what="init image")
    check_declared(FakeAttachment("u", "a.png", 10, None), max_bytes=1000, what="x")


def test_decode_check_accepts_images_and_refuses_the_rest() -> None:
    assert decode_check(png_bytes(8, 6), max_pixels=1000, what="x") == ("png", 8, 6)
    assert decode_check(jpeg_bytes(), max_pixels=1000, what="x")[0] == "jpeg"
    with pytest.raises(AttachmentError, match="not a PNG, JPEG, WebP or GIF"):
        decode_check(b"hello world", max_pixels=1000, what="x")
    with pytest.raises(AttachmentError, match="damaged"):
        decode_check(png_bytes()[:40], max_pixels=1000, what="x")
    with pytest.raises(AttachmentError, match="8×6 pixels; the limit is 40 pixels"):
        decode_check(png_bytes(8, 6), max_pixels=40, what="x")


def test_decompression_bomb_is_refused_from_its_header() -> None:
    bomb = bomb_png(50_000, 50_000)  # 2.5 gigapixels in a few hundred bytes
    assert len(bomb) < 2000
    with pytest.raises(AttachmentError, match="too large"):
        decode_check(bomb, max_pixels=4096 * 4096, what="init image")


async def test_fetch_saves_a_good_image(server: TestServer, tmp_path: Path) -> None:
    async with aiohttp.ClientSession() as session:
        checked = await fetch_image(
            session,
            attachment(server, "ok.png"),
            tmp_path,
            max_bytes=10_000,
            max_pixels=10_000,
            origins=origin(server),
        )
        jpeg = await fetch_image(
            session,
            attachment(server, "photo.jpg", ctype="image/jpeg"),
            tmp_path,
            max_bytes=10_000,
            max_pixels=10_000,
            origins=origin(server),
        )
    assert checked.path.parent == tmp_path
    assert checked.path.read_bytes() == png_bytes()
    assert (checked.format, checked.width, checked.height) == ("png", 8, 6)
    assert jpeg.path.suffix == ".jpg"
    assert checked.path != jpeg.path


@pytest.mark.parametrize(
    ("name", "ctype", "message"),
    [
        ("notes.txt", None, "not a PNG, JPEG, WebP or GIF"),
        ("notes.txt", "text/plain", r"not an image \(text/plain\)"),
        ("broken.png", "image/png", "damaged"),
        ("bomb.png", "image/png", "too large|limit is"),
        ("missing.png", "image/png", "could not be downloaded"),
    ],
)
async def test_fetch_refuses_bad_files(
    server: TestServer, tmp_path: Path, name: str, ctype: str | None, message: str
) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(AttachmentError, match=message):
            await fetch_image(
                session,
                attachment(server, name, ctype=ctype),
                tmp_path,
                max_bytes=100_000,
                max_pixels=4096 * 4096,
                origins=origin(server),
            )
    assert listing(tmp_path) == []  # nothing kept


async def test_download_stops_at_the_limit_even_when_the_size_was_understated(
    server: TestServer, tmp_path: Path
) -> None:
    # Discord said 100 bytes; the server streams hundreds of MiB without a Content-Length.
    async with aiohttp.ClientSession() as session:
        with pytest.raises(AttachmentError, match="larger than 1.0 MiB"):
            await fetch_image(
                session,
                attachment(server, "endless", size=100),
                tmp_path,
                max_bytes=1024 * 1024,
                max_pixels=4096 * 4096,
                origins=origin(server),
            )


def test_only_discords_cdn_over_https_is_allowed_by_default() -> None:
    assert allowed_url("https://cdn.discordapp.com/attachments/1/2/a.png", DISCORD_CDN_ORIGINS)
    assert allowed_url("https://media.discordapp.net/attachments/1/2/a.png", DISCORD_CDN_ORIGINS)
    for url in (
        "http://cdn.discordapp.com/attachments/1/2/a.png",  # not https
        "https://cdn.discordapp.com.evil.example/a.png",
        "https://evil.example/cdn.discordapp.com/a.png",
        "https://cdn.discordapp.com:8443/a.png",
        "http://127.0.0.1:8080/files/ok.png",
        "file:///etc/passwd",
        "not a url",
    ):
        assert not allowed_url(url, DISCORD_CDN_ORIGINS), url
    with pytest.raises(ValueError, match="not an origin"):
        check_origin("https://cdn.discordapp.com/attachments")


async def test_a_host_that_is_not_allowed_is_never_contacted(
    server: TestServer, tmp_path: Path
) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(AttachmentError, match="not a file uploaded to Discord"):
            # The production default: the local test server is not Discord's CDN.
            await fetch_image(
                session,
                attachment(server, "ok.png"),
                tmp_path,
                max_bytes=10_000,
                max_pixels=10_000,
            )
    assert listing(tmp_path) == []


@pytest.mark.parametrize("name", ["redirect.png", "local-redirect.png"])
async def test_redirects_are_not_followed(server: TestServer, tmp_path: Path, name: str) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(AttachmentError, match="redirected elsewhere"):
            await fetch_image(
                session,
                attachment(server, name),
                tmp_path,
                max_bytes=10_000,
                max_pixels=10_000,
                origins=origin(server),
            )
    assert listing(tmp_path) == []
