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

from generation import weights
from generation.errors import BadRequest, CheckpointError, WeightsNotFound
from generation.generators import vqgan
from generation.guidance import ClipGuide
from generation.loop import torch_generator
from generation.models import (
    TINY_WARNING,
    ModelsConfig,
    ModelStore,
    describe_device,
    require_gpu_for_real_models,
    resolve_weight,
    url_cache_path,
)
from generation.perceptor import to_half
from generation.startup import open_store
from generation.weights import DamagedWeights
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
    assert set(models) == {
        "imagenet_f16_16384", "imagenet_f16_1024", "gumbel_f8_8192", "clipgen_coco",
    }  # fmt: skip
    assert all(m["checkpoint"].startswith("https://") for m in models.values())
    # CLIP-guided diffusion's prior: OpenAI's unconditional models; CLIP-GEN: HFAiLab's COCO.
    diffusion = config.generator_section("diffusion")
    assert diffusion["model"] in diffusion["models"]
    assert diffusion["models"]["openai_256_uncond"]["checkpoint"].endswith(
        "/256x256_diffusion_uncond.pt"
    )
    clipgen = config.generator_section("clipgen")
    assert clipgen["model"].endswith("/gpt_coco.pt") and clipgen["vqgan"] == "clipgen_coco"


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


# --------------------------------------------------------------------------- checksums


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_a_download_that_fails_its_sha256_is_moved_aside(tmp_path, file_server) -> None:
    served, base = file_server
    (served / "w.ckpt").write_bytes(b"<html>error page</html>")
    cache = tmp_path / "cache"
    url = f"{base}/w.ckpt"
    with pytest.raises(DamagedWeights) as error:
        resolve_weight(url, what="w", how_to_get="", cache_dir=cache, sha256=_sha(b"weights"))
    target = url_cache_path(url, cache)
    moved = target.with_name(target.name + ".corrupt")
    assert not target.exists() and moved.read_bytes() == b"<html>error page</html>"
    assert str(moved) in str(error.value) and "sha256" in str(error.value)
    # Once the server has the right file, the next start downloads it and uses it.
    (served / "w.ckpt").write_bytes(b"weights")
    good = resolve_weight(url, what="w", how_to_get="", cache_dir=cache, sha256=_sha(b"weights"))
    assert good == target and good.read_bytes() == b"weights"


def test_a_damaged_cached_file_is_replaced_by_a_fresh_download(tmp_path, file_server) -> None:
    served, base = file_server
    (served / "w.ckpt").write_bytes(b"weights")
    url, cache = f"{base}/w.ckpt", tmp_path / "cache"
    target = url_cache_path(url, cache)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"weig")  # an old interrupted copy
    path = resolve_weight(url, what="w", how_to_get="", cache_dir=cache, sha256=_sha(b"weights"))
    assert path.read_bytes() == b"weights"
    assert target.with_name(target.name + ".corrupt").read_bytes() == b"weig"


def test_a_cached_file_is_hashed_once_per_process(tmp_path, monkeypatch) -> None:
    calls = []
    real = weights.file_sha256
    monkeypatch.setattr(weights, "file_sha256", lambda path: calls.append(path) or real(path))
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"weights")
    for _ in range(3):
        assert resolve_weight(str(path), what="w", how_to_get="", sha256=_sha(b"weights"))
    assert len(calls) == 1
    # The operator's own file that does not match is named, and left where it is.
    with pytest.raises(DamagedWeights, match=str(path)):
        resolve_weight(str(path), what="w", how_to_get="", sha256=_sha(b"other"))
    assert path.exists()


def test_models_toml_takes_a_sha256_per_weight_file(tmp_path) -> None:
    digest = _sha(b"x")
    (tmp_path / "models.toml").write_text(
        f"""
[[clip]]
model = "ViT-B-32"
pretrained = "weights/b32.safetensors"
sha256 = "{digest.upper()}"
[generators.vqgan.models.mine]
config = "vq/model.yaml"
checkpoint = "https://example.org/last.ckpt"
sha256 = "{digest}"
"""
    )
    config = ModelsConfig.load(str(tmp_path / "models.toml"))
    assert config.clip[0].sha256 == digest
    assert config.sha256_for(str(tmp_path / "weights/b32.safetensors")) == digest
    assert config.sha256_for("https://example.org/last.ckpt") == digest
    assert config.sha256_for("vq/model.yaml") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[clip]]\nmodel = "ViT-B-32"\npretrained = "a.pt"\nsha256 = "abc"\n', "64 hex"),
        (
            '[[clip]]\nmodel = "ViT-B-32"\n[generators.diffusion]\nmodel = "a/b"\n'
            f'sha256 = "{"0" * 64}"\n',
            "checks one weight file",
        ),
        ('[[clip]]\nmodel = "local-dir:x"\npretrained = "a.pt"\n', "remove pretrained"),
        ('max_resident = 0\n[[clip]]\nmodel = "ViT-B-32"\n', "max_resident"),
    ],
)
def test_bad_checksums_and_limits_say_what_is_wrong(tmp_path, text, message) -> None:
    path = tmp_path / "models.toml"
    path.write_text(text)
    with pytest.raises(BadRequest, match=message):
        ModelsConfig.load(str(path))


def _vqgan_models_file(tmp_path: Path, checkpoint: str, extra: str = "") -> str:
    tiny_yaml = Path(ModelsConfig.load("tiny").base_dir) / "tiny-vqgan.yaml"
    text = (Path(ModelsConfig.load("tiny").base_dir) / "tiny.toml").read_text()
    text = text.replace(
        'config = "imagine-tiny-clip.json"', f'config = "{tiny_yaml.parent}/imagine-tiny-clip.json"'
    )
    text = text.replace('config = "tiny-vqgan.yaml"', f'config = "{tiny_yaml}"')
    text = text.replace('checkpoint = "random"', f'checkpoint = "{checkpoint}"\n{extra}')
    text = text.replace("download = false", f'download = true\ncache_dir = "{tmp_path / "cache"}"')
    path = tmp_path / "models.toml"
    path.write_text(text)
    return str(path)


def test_a_truncated_cached_checkpoint_is_named_and_moved_aside(tmp_path, file_server) -> None:
    served, base = file_server
    (served / "last.ckpt").write_bytes(b"PK\x03\x04" + b"\x00" * 64)  # a zip cut short
    url = f"{base}/last.ckpt"
    store = ModelStore(ModelsConfig.load(_vqgan_models_file(tmp_path, url)), device="cpu")
    with pytest.raises(CheckpointError) as error:
        vqgan.load_model(store)
    cached = url_cache_path(url, tmp_path / "cache")
    message = str(error.value)
    assert str(cached) in message and "moved aside" in message
    assert not cached.exists() and cached.with_name(cached.name + ".corrupt").exists()


def test_a_readable_but_unusable_cached_file_is_named_with_what_to_do(
    tmp_path, file_server
) -> None:
    served, base = file_server
    from safetensors.torch import save_file

    save_file({"unrelated": torch.zeros(2)}, str(served / "last.safetensors"))
    url = f"{base}/last.safetensors"
    store = ModelStore(ModelsConfig.load(_vqgan_models_file(tmp_path, url)), device="cpu")
    with pytest.raises(CheckpointError) as error:
        vqgan.load_model(store)
    cached = url_cache_path(url, tmp_path / "cache")
    assert f"cached file {cached}" in str(error.value) and "delete it" in str(error.value)
    assert cached.exists()  # whole and readable: only named, not moved


# --------------------------------------------------------------------------- residency


def test_the_store_keeps_clip_and_at_most_max_resident_other_models() -> None:
    import dataclasses

    config = dataclasses.replace(ModelsConfig.load("tiny"), max_resident=2)
    store = ModelStore(config, device="cpu")
    store.perceptor()
    for key in ("a", "b", "c"):
        store.get_or_load(key, lambda key=key: key)
    assert store.loaded() == ("perceptor", "b", "c")
    store.get_or_load("b", lambda: "again")  # used: now the most recent
    store.get_or_load("d", lambda: "d")
    assert store.loaded() == ("perceptor", "b", "d")
    assert store.get_or_load("b", lambda: "reloaded") == "b"


# --------------------------------------------------------------------------- local-dir CLIP


def test_an_open_clip_local_dir_loads_like_any_model(tmp_path) -> None:
    from safetensors.torch import save_file

    tiny = tiny_store().perceptor().models[0]
    folder = tmp_path / "clips" / "my-clip"
    folder.mkdir(parents=True)
    arch = json.loads(Path(ModelsConfig.load("tiny").clip[0].config).read_text())
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": arch}))
    state = {k: v.contiguous() for k, v in tiny.model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    (tmp_path / "models.toml").write_text(
        'tiny = true\n[[clip]]\nmodel = "local-dir:clips/my-clip"\n'
    )

    config = ModelsConfig.load(str(tmp_path / "models.toml"))
    assert config.clip[0].model == f"local-dir:{folder}"
    loaded = ModelStore(config, device="cpu").perceptor().models[0]
    assert loaded.input_size == tiny.input_size and loaded.name == "my-clip/local-dir"
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            loaded.model.state_dict().values(), tiny.model.state_dict().values(), strict=True
        )
    )
    text = ["a lighthouse"]
    assert torch.allclose(
        loaded.model.encode_text(loaded.tokenizer(text)),
        tiny.model.encode_text(tiny.tokenizer(text)),
    )


def test_a_local_dir_without_weights_says_what_it_needs(tmp_path) -> None:
    folder = tmp_path / "empty-clip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text("{}")
    (tmp_path / "models.toml").write_text(f'[[clip]]\nmodel = "local-dir:{folder}"\n')
    store = ModelStore(ModelsConfig.load(str(tmp_path / "models.toml")), device="cpu")
    with pytest.raises(WeightsNotFound, match="holds no weights file"):
        store.perceptor()


# --------------------------------------------------------------------------- half precision


def test_half_clip_keeps_matmul_weights_low_and_takes_fp32_inputs() -> None:
    import copy

    model = tiny_store().perceptor().models[0].model
    half = to_half(copy.deepcopy(model), torch.bfloat16)
    dtypes = {name: p.dtype for name, p in half.named_parameters()}
    assert dtypes["visual.transformer.resblocks.0.mlp.c_fc.weight"] == torch.bfloat16
    assert dtypes["visual.ln_post.weight"] == torch.float32  # norms stay fp32
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        full, low = model.encode_image(images), half.encode_image(images)  # fp32 in, no autocast
    cosine = torch.nn.functional.cosine_similarity(full, low.float(), dim=-1)
    assert bool((cosine > 0.99).all())


# --------------------------------------------------------------------------- the device


def test_real_models_refuse_a_cpu_unless_it_was_asked_for() -> None:
    cpu = torch.device("cpu")
    with pytest.raises(BadRequest, match="IMAGINE_DEVICE=cpu"):
        require_gpu_for_real_models(ModelsConfig.load(None), None, cpu)
    require_gpu_for_real_models(ModelsConfig.load(None), "cpu", cpu)  # asked for: fine
    require_gpu_for_real_models(ModelsConfig.load("tiny"), None, cpu)  # tiny: fine
    assert "threads" in describe_device(cpu)


# --------------------------------------------------------------------------- start-up


def test_open_store_logs_the_device_and_loads_the_allowed_generators(caplog) -> None:
    with caplog.at_level(logging.INFO):
        store = open_store("tiny", None, generators=("vqgan", "pixels"))
    assert store.loaded() == ("perceptor", "vqgan:tiny")  # before any job asks
    assert f"device: cpu ({torch.get_num_threads()} threads)" in caplog.text
    assert "loading generator vqgan (1 of 2)" in caplog.text
    assert "generator pixels (2 of 2) needs only CLIP" in caplog.text
    # clipgen imports a load_model that takes a folder; its own takes the store.
    clipgen = open_store("tiny", None, generators=("clipgen",))
    assert any(key.startswith("clipgen") for key in clipgen.loaded())


def test_open_store_refuses_real_models_on_an_unasked_cpu_before_loading(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BadRequest, match="IMAGINE_DEVICE=cpu"):
        open_store(None, None, generators=("vqgan",))
