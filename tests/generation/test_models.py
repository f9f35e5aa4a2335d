"""The models TOML, weight resolution (local, cache, download) and the store's caching."""

from __future__ import annotations

import functools
import http.server
import json
import logging
import threading
from pathlib import Path

import pytest
import torch

from generation.errors import BadRequest, WeightsNotFound
from generation.generators import vqgan
from generation.guidance import ClipGuide
from generation.loop import torch_generator
from generation.models import (
    TINY_WARNING,
    ModelsConfig,
    ModelStore,
    resolve_weight,
    url_cache_path,
)
from tests.generation.generator_helpers import request, tiny_store


def test_tiny_preset_is_tiny_and_warns_that_its_pictures_are_noise(caplog) -> None:
    config = ModelsConfig.load("tiny")
    assert config.tiny and config.clip[0].pretrained is None
    with caplog.at_level(logging.WARNING, logger="generation.models"):
        ModelStore(config, device="cpu")
    assert TINY_WARNING in caplog.text and "noise" in TINY_WARNING


def test_defaults_name_the_published_models_and_download_urls() -> None:
    config = ModelsConfig.load(None)
    assert not config.tiny
    assert config.clip[0].model == "ViT-B-32" and config.clip[0].pretrained
    models = config.generator_section("vqgan")["models"]
    assert set(models) == {"imagenet_f16_16384", "imagenet_f16_1024", "gumbel_f8_8192"}
    assert all(m["checkpoint"].startswith("https://") for m in models.values())


def test_toml_file_with_relative_paths_and_an_ensemble(tmp_path) -> None:
    (tmp_path / "models.toml").write_text(
        """
cache_dir = "cache"
download = false
[[clip]]
model = "ViT-B-32"
pretrained = "weights/b32.safetensors"
weight = 2
[[clip]]
model = "RN50"
pretrained = "openai"
weight = 0.5
[cuda]
autocast = "fp16"
vqgan_cudnn = "off"
[defaults]
steps = 10
[generators.vqgan.models.mine]
config = "vq/model.yaml"
checkpoint = "hf://owner/repo/last.ckpt"
"""
    )
    config = ModelsConfig.load(str(tmp_path / "models.toml"))
    assert config.cache_dir == tmp_path / "cache" and config.download is False
    assert [c.weight for c in config.clip] == [2.0, 0.5]
    assert config.clip[0].pretrained == str(tmp_path / "weights/b32.safetensors")
    assert config.clip[1].pretrained == "openai"
    assert config.cuda.autocast == "fp16" and config.cuda.vqgan_cudnn == "off"
    assert config.defaults == {"steps": 10}
    assert config.path("vq/model.yaml") == str(tmp_path / "vq/model.yaml")
    assert config.path("hf://owner/repo/last.ckpt") == "hf://owner/repo/last.ckpt"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[clip]]\nweight = 1\n", "needs model"),
        ("x = 1\n", "at least one"),
        ('[[clip]]\nmodel = "ViT-B-32"\nweight = -1\n', "weight must be"),
        ('[[clip]]\nmodel = "ViT-B-32"\n[cuda]\nautocast = "fp8"\n', "autocast must be"),
        ('[[clip]]\nmodel = "ViT-B-32"\n[defaults]\nlr = 3\n', "may only set"),
        ("[[clip]\n", "not valid TOML"),
    ],
)
def test_bad_models_files_say_what_is_wrong(tmp_path, text, message) -> None:
    path = tmp_path / "models.toml"
    path.write_text(text)
    with pytest.raises(BadRequest, match=message):
        ModelsConfig.load(str(path))


def test_missing_models_file() -> None:
    with pytest.raises(BadRequest, match="not found.*tiny"):
        ModelsConfig.load("/no/such/models.toml")


def test_missing_local_weight_says_where_and_how(tmp_path) -> None:
    with pytest.raises(WeightsNotFound) as error:
        resolve_weight(str(tmp_path / "x.ckpt"), what="VQGAN x", how_to_get="Fetch it from Y.")
    assert str(tmp_path / "x.ckpt") in str(error.value) and "Fetch it from Y." in str(error.value)


def test_url_not_cached_with_downloads_off(tmp_path) -> None:
    url = "https://example.org/d/abc/files/?p=%2Fckpts%2Flast.ckpt&dl=1"
    with pytest.raises(WeightsNotFound) as error:
        resolve_weight(
            url, what="VQGAN x", how_to_get="Get it.", cache_dir=tmp_path, download=False
        )
    target = url_cache_path(url, tmp_path)
    assert str(target) in str(error.value) and target.name.endswith("last.ckpt")
    # Placed by hand at that path, it is found without any network.
    target.parent.mkdir(parents=True)
    target.write_bytes(b"weights")
    assert (
        resolve_weight(url, what="x", how_to_get="", cache_dir=tmp_path, download=False) == target
    )


def test_hub_file_not_cached_with_downloads_off(tmp_path) -> None:
    with pytest.raises(WeightsNotFound, match="not in the cache"):
        resolve_weight(
            "hf://owner/repo/w.ckpt", what="w", how_to_get="", cache_dir=tmp_path, download=False
        )


@pytest.fixture
def file_server(tmp_path):
    """A local HTTP server serving tmp_path/served (the download path without the internet)."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join(timeout=5)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_url_is_downloaded_into_the_cache_once(tmp_path, file_server) -> None:
    served, base = file_server
    (served / "model.yaml").write_text("model: {}\n")
    cache = tmp_path / "cache"
    path = resolve_weight(f"{base}/model.yaml", what="cfg", how_to_get="", cache_dir=cache)
    assert path.read_text() == "model: {}\n" and path.is_relative_to(cache)
    (served / "model.yaml").unlink()  # the second time it comes from the cache
    assert resolve_weight(f"{base}/model.yaml", what="cfg", how_to_get="", cache_dir=cache) == path


def test_failed_download_leaves_no_partial_file(tmp_path, file_server) -> None:
    _, base = file_server
    with pytest.raises(WeightsNotFound, match="could not be downloaded.*Get it"):
        resolve_weight(f"{base}/absent.ckpt", what="ckpt", how_to_get="Get it.", cache_dir=tmp_path)
    assert not any((tmp_path / "downloads").iterdir())


def test_store_loads_each_model_once() -> None:
    store = ModelStore(ModelsConfig.load("tiny"), device="cpu")
    calls = []
    assert store.get_or_load("k", lambda: calls.append(1) or "value") == "value"
    assert store.get_or_load("k", lambda: calls.append(1) or "other") == "value"
    assert calls == [1]
    assert store.perceptor() is store.perceptor()
    assert vqgan.load_model(store) is vqgan.load_model(store, "tiny")


def test_tiny_models_are_the_same_in_every_store() -> None:
    a = ModelStore(ModelsConfig.load("tiny"), device="cpu").perceptor().models[0].model
    b = tiny_store().perceptor().models[0].model
    assert all(
        torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_ensemble_uses_each_models_own_input_size(tmp_path) -> None:
    arch = json.loads((Path(ModelsConfig.load("tiny").clip[0].config)).read_text())
    arch["vision_cfg"]["image_size"] = 48
    (tmp_path / "imagine-test-clip48.json").write_text(json.dumps(arch))
    base = ModelsConfig.load("tiny")
    second = type(base.clip[0])(
        model="imagine-test-clip48", config=tmp_path / "imagine-test-clip48.json", weight=0.5
    )
    import dataclasses

    store = ModelStore(dataclasses.replace(base, clip=(base.clip[0], second)), device="cpu")
    perceptor = store.perceptor()
    assert [m.input_size for m in perceptor.models] == [32, 48]
    assert [m.weight for m in perceptor.models] == [1.0, 0.5]
    assert [e.shape for e in perceptor.encode_text(["a", "b"])] == [(2, 32), (2, 32)]
    image = torch.rand(1, 3, 64, 64, requires_grad=True)
    guide = ClipGuide.from_request(request("vqgan", cutn=4), perceptor, torch_generator(0, "cpu"))
    guide.loss(image).backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
    assert store.describe() == "imagine-tiny-clip/random:1, imagine-test-clip48/random:0.5"
