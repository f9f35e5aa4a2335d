"""Downloads of weight files from URLs against a local server that misbehaves on purpose
(127.0.0.1 only): cut connections, chunked bodies cut short, no Content-Length, server errors,
two downloaders at once (issue 20.5, issue 16.5)."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from generation import weights
from generation.checkpoints import save_safetensors
from generation.errors import WeightsNotFound
from generation.weights import probe, resolve_weight, url_cache_path
from tests.misbehaving_server import MisbehavingServer, serving

TIMEOUT = 30


@pytest.fixture
def server() -> Iterator[MisbehavingServer]:
    yield from serving()


@pytest.fixture(autouse=True)
def no_waits_between_tries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(weights, "RETRY_WAITS_S", (0.0, 0.0, 0.0, 0.0))


def fetch(server: MisbehavingServer, path: str, cache: Path) -> Path:
    return resolve_weight(server.url(path), what="w", how_to_get="Get it.", cache_dir=cache)


def _bytes(size: int) -> bytes:
    return bytes(i % 251 for i in range(size))


def test_a_cut_download_is_resumed_where_it_stopped(server, tmp_path) -> None:
    server.files["/w.ckpt"] = data = _bytes(200_000)
    server.plans["/w.ckpt"] = ["cut", "whole"]
    path = fetch(server, "/w.ckpt", tmp_path)
    assert path.read_bytes() == data
    # The second request asks for the rest only (less the piece being read when it was cut).
    [(_, first), (_, second)] = server.seen
    assert first is None and 0 < part_size_before_last(server) <= 100_000
    assert not path.with_name(path.name + ".part").exists()


@pytest.mark.parametrize("cut", ["chunked-cut", "cut"])
def test_a_download_cut_every_time_is_one_clear_line_and_keeps_its_part(
    server, tmp_path, cut
) -> None:
    server.files["/w.ckpt"] = _bytes(200_000)
    server.plans["/w.ckpt"] = [cut] * 5
    url = server.url("/w.ckpt")
    target = url_cache_path(url, tmp_path)
    with pytest.raises(WeightsNotFound) as error:
        fetch(server, "/w.ckpt", tmp_path)
    message = str(error.value)
    assert "\n" not in message and "5 tries" in message
    assert url in message and str(target) in message and "next start resumes" in message
    assert not target.exists()  # never cached as whole
    part = target.with_name(target.name + ".part")
    assert part.stat().st_size > 0
    # The next start resumes from the kept bytes and finishes.
    assert fetch(server, "/w.ckpt", tmp_path).read_bytes() == server.files["/w.ckpt"]
    assert server.seen[-1][1] == f"bytes={part_size_before_last(server)}-"


def part_size_before_last(server: MisbehavingServer) -> int:
    ranges = [r for _, r in server.seen if r]
    return int(ranges[-1].removeprefix("bytes=").removesuffix("-"))


def test_a_download_without_length_cut_short_is_not_cached(server, tmp_path) -> None:
    tensors = {"w": torch.arange(20_000, dtype=torch.float32)}
    save_safetensors(tensors, tmp_path / "src.safetensors")
    server.files["/w.safetensors"] = (tmp_path / "src.safetensors").read_bytes()
    server.plans["/w.safetensors"] = ["no-length-cut"] * 5
    cache = tmp_path / "cache"
    with pytest.raises(WeightsNotFound, match="sent no length and the file is a truncated"):
        fetch(server, "/w.safetensors", cache)
    assert not url_cache_path(server.url("/w.safetensors"), cache).exists()
    # A whole file without a length is taken.
    server.plans["/w.safetensors"] = ["no-length"]
    path = fetch(server, "/w.safetensors", cache)
    assert path.read_bytes() == server.files["/w.safetensors"]


def test_a_server_error_is_retried_and_a_missing_file_is_not(server, tmp_path) -> None:
    server.files["/w.ckpt"] = data = _bytes(1000)
    server.plans["/w.ckpt"] = ["500", "whole"]
    assert fetch(server, "/w.ckpt", tmp_path).read_bytes() == data
    with pytest.raises(WeightsNotFound, match=r"answered 404.*Get it\. Or place the file at"):
        fetch(server, "/absent.ckpt", tmp_path)
    assert [p for p, _ in server.seen].count("/absent.ckpt") == 1


def test_a_server_that_does_not_resume_gets_the_whole_file_again(server, tmp_path) -> None:
    server.files["/w.ckpt"] = data = _bytes(100_000)
    server.plans["/w.ckpt"] = ["cut", "no-ranges"]
    assert fetch(server, "/w.ckpt", tmp_path).read_bytes() == data


def test_progress_is_logged_while_a_download_runs(server, tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setattr(weights, "PROGRESS_EVERY_S", 0.0)
    server.files["/w.ckpt"] = _bytes(3 << 20)
    with caplog.at_level(logging.INFO, logger="generation.weights"):
        fetch(server, "/w.ckpt", tmp_path)
    progress = [r.getMessage() for r in caplog.records]
    assert any(re.fullmatch(r"w: \d+ MB of 3 MB \(\d+%\), \d+ MB/s", m) for m in progress)


class _Flag(logging.Handler):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text, self.seen = text, threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()


def test_two_downloaders_of_one_file_share_no_part_and_download_once(
    server, tmp_path, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="generation.weights")
    server.files["/w.ckpt"] = data = _bytes(100_000)
    server.plans["/w.ckpt"] = ["hold"]
    flag = _Flag("another process is downloading")
    logging.getLogger("generation.weights").addHandler(flag)
    results: dict[str, Path] = {}
    try:
        first = threading.Thread(
            target=lambda: results.update(a=fetch(server, "/w.ckpt", tmp_path))
        )
        first.start()
        assert server.held.wait(TIMEOUT)
        second = threading.Thread(
            target=lambda: results.update(b=fetch(server, "/w.ckpt", tmp_path))
        )
        second.start()
        assert flag.seen.wait(TIMEOUT)  # the second waits for the first's lock
        server.release.set()
        first.join(TIMEOUT)
        second.join(TIMEOUT)
    finally:
        logging.getLogger("generation.weights").removeHandler(flag)
    assert results["a"] == results["b"] and results["a"].read_bytes() == data
    assert len(server.seen) == 1


# ---- the probe: files cut short are recognised, so a cached one is not used again ----------------


def _legacy(tmp_path: Path) -> Path:
    path = tmp_path / "old.pth"
    tensors = {"a": torch.randn(30, 40), "b": torch.arange(500), "h": torch.ones(7).half()}
    torch.save(tensors, path, _use_new_zipfile_serialization=False)
    return path


def test_a_whole_legacy_torch_file_passes_the_probe(tmp_path) -> None:
    assert probe(_legacy(tmp_path)) is None


@pytest.mark.parametrize("keep", [0.5, 0.99, 0.05])
def test_a_cut_legacy_torch_file_fails_the_probe(tmp_path, keep) -> None:
    path = _legacy(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    assert probe(path) == "a truncated torch checkpoint"


def test_a_safetensors_file_cut_in_its_data_fails_the_probe(tmp_path) -> None:
    path = tmp_path / "w.safetensors"
    save_safetensors({"w": torch.randn(100, 100)}, path)
    assert probe(path) is None
    path.write_bytes(path.read_bytes()[:-10])
    assert probe(path) == "a truncated safetensors file"


# ---- hub files: huggingface_hub resumes and locks; we retry network faults and say what to do ---


def test_a_hub_download_is_tried_again_after_a_network_fault(tmp_path, monkeypatch) -> None:
    import huggingface_hub

    calls: list[bool] = []
    blob = tmp_path / "blob.safetensors"
    blob.write_bytes(b"weights")

    def hub_download(repo_id, filename, *, cache_dir, local_files_only=False):
        calls.append(local_files_only)
        if local_files_only or len(calls) < 3:
            raise ConnectionError("the network is down")
        return str(blob)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub_download)
    path = resolve_weight(
        "hf://owner/repo/w.safetensors", what="w", how_to_get="", cache_dir=tmp_path
    )
    assert path == blob and calls == [True, False, False]


def test_a_hub_download_that_keeps_failing_is_one_line(tmp_path, monkeypatch) -> None:
    import huggingface_hub

    def hub_download(repo_id, filename, *, cache_dir, local_files_only=False):
        raise ConnectionError("the network\nis down")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub_download)
    with pytest.raises(WeightsNotFound) as error:
        resolve_weight("hf://owner/repo/w.ckpt", what="w", how_to_get="Get it.", cache_dir=tmp_path)
    message = str(error.value)
    assert "\n" not in message and "hf://owner/repo/w.ckpt" in message
    assert str(tmp_path / "hub") in message and "5 tries" in message and "Get it." in message


def test_a_file_the_hub_does_not_have_fails_at_once(tmp_path, monkeypatch) -> None:
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    calls: list[bool] = []

    def hub_download(repo_id, filename, *, cache_dir, local_files_only=False):
        calls.append(local_files_only)
        raise EntryNotFoundError("404 Client Error: Entry Not Found")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub_download)
    with pytest.raises(WeightsNotFound, match="refused hf://owner/repo/w.ckpt.*check the owner"):
        resolve_weight("hf://owner/repo/w.ckpt", what="w", how_to_get="", cache_dir=tmp_path)
    assert calls == [True, False]


def test_a_cached_legacy_file_cut_short_is_moved_aside_when_its_load_fails(tmp_path) -> None:
    import dataclasses

    from generation.checkpoints import load_state_dict
    from generation.errors import CheckpointError
    from generation.models import ModelsConfig, ModelStore

    config = dataclasses.replace(ModelsConfig.load("tiny"), cache_dir=tmp_path / "cache")
    store = ModelStore(config, device="cpu")
    url = "https://example.org/old.pth"
    cached = url_cache_path(url, store.cache_dir)
    cached.parent.mkdir(parents=True, exist_ok=True)
    data = _legacy(tmp_path).read_bytes()
    cached.write_bytes(data[: len(data) * 3 // 4])  # an old download cut short

    def load() -> dict:
        return load_state_dict(store.resolve(url, what="old", how_to_get=""))

    with pytest.raises(CheckpointError, match="truncated torch checkpoint and was moved aside"):
        store.get_or_load("old", load)
    assert not cached.exists() and cached.with_name(cached.name + ".corrupt").exists()
