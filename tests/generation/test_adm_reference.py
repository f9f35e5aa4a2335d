"""OpenAI's ADM checkpoints (guided-diffusion's UNetModel) load into our ADMUNet through the
models TOML and give OpenAI's outputs; DDPM steps use the learned variance as guided-diffusion
does; the CLI paints with them.

The reference is OpenAI's own code, from the registry (`guided-diffusion-sdk`, dev extra), built
with the hyperparameters of 256x256_diffusion_uncond.pt and of the 512 px fine-tune, at a tiny
width, and saved as they save theirs: ``torch.save(model.state_dict())``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from generation.__main__ import main
from generation.adm_unet import ADMConfig
from generation.generators import diffusion
from generation.models import CONFIG_DIR, ModelsConfig, ModelStore
from generation.png import read_png_metadata
from tests.generation.generator_helpers import one_torch_thread  # noqa: F401 - autouse

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # its torch.cuda.amp decorators
    unet_module = pytest.importorskip("guided_diffusion.unet")
    gd_respace = pytest.importorskip("guided_diffusion.respace")
    gd_diffusion = pytest.importorskip("guided_diffusion.gaussian_diffusion")

# The published models' hyperparameters (guided-diffusion's README and Disco Diffusion's
# model_config), with the width cut from 256 to 32 and one residual block per level.
MULT_256 = (1, 1, 2, 2, 4, 4)
MULT_512 = (0.5, 1, 1, 2, 2, 4, 4)


def reference_unet(image_size: int, channel_mult: tuple[float, ...]) -> torch.nn.Module:
    torch.manual_seed(0)
    model = unet_module.UNetModel(
        image_size=image_size,
        in_channels=3,
        model_channels=64,
        out_channels=6,  # learn_sigma
        num_res_blocks=1,
        attention_resolutions=tuple(image_size // r for r in (32, 16, 8)),
        dropout=0.0,
        channel_mult=channel_mult,
        num_classes=None,
        use_checkpoint=False,
        use_fp16=False,
        num_heads=4,
        num_head_channels=32,
        num_heads_upsample=-1,
        use_scale_shift_norm=True,
        resblock_updown=True,
        use_new_attention_order=False,
    )
    # Their zero-initialised output convs would make every output 0: give every weight a value.
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.05)
    return model.eval()


def write_user_files(tmp_path: Path, image_size: int, channel_mult: tuple[float, ...]) -> Path:
    """The .pt as OpenAI saves it, its architecture JSON and a models TOML naming both, as a
    user writes them; returns the TOML."""
    torch.save(reference_unet(image_size, channel_mult).state_dict(), tmp_path / "adm.pt")
    config = json.loads((CONFIG_DIR / f"adm-{image_size}-uncond.json").read_text())
    config.update(model_channels=64, num_res_blocks=1, num_head_channels=32)
    (tmp_path / "adm-tiny.json").write_text(json.dumps(config))
    tiny_clip = CONFIG_DIR / "imagine-tiny-clip.json"
    models = tmp_path / "models.toml"
    models.write_text(
        f'download = false\n[[clip]]\nmodel = "imagine-tiny-clip"\nconfig = "{tiny_clip}"\n'
        "seed = 0\n"
        '[generators.diffusion]\nmodel = "adm.pt"\nunet_config = "adm-tiny.json"\n'
    )
    return models


def store_for(models: Path) -> ModelStore:
    return ModelStore(ModelsConfig.from_toml(models), device="cpu")


@pytest.mark.parametrize(("image_size", "channel_mult"), [(256, MULT_256), (512, MULT_512)])
def test_checkpoint_loaded_through_the_toml_gives_openais_outputs(
    tmp_path, image_size, channel_mult
) -> None:
    models = write_user_files(tmp_path, image_size, channel_mult)
    loaded = diffusion.load_model(store_for(models))
    reference = reference_unet(image_size, channel_mult)
    size = 2 ** (len(channel_mult) - 1) * 2  # two pixels at the deepest level
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([999, 40])
    with torch.no_grad():
        theirs = reference(x, t)  # [2, 6, size, size]
        ours = diffusion.predict(loaded.unet, x, t)
    difference = float((theirs - ours).abs().max())
    print(f"ADM {image_size} px layout: max abs difference {difference:.3g}")
    assert ours.shape == (2, 6, size, size)
    assert difference < 1e-5
    assert float(theirs.abs().mean()) > 0.01  # not two zero outputs
    assert loaded.factor == 2 ** (len(channel_mult) - 1)


def test_ddpm_step_uses_the_learned_variance_as_guided_diffusion_does(tmp_path) -> None:
    """One DDPM step of 10 (t = 500 -> 400): the mean and the learned log variance of
    guided-diffusion's SpacedDiffusion (clip_denoised) against diffusers' learned_range."""
    model = diffusion.load_model(store_for(write_user_files(tmp_path, 256, MULT_256))).unet
    betas = gd_diffusion.get_named_beta_schedule("linear", 1000)
    spaced = gd_respace.SpacedDiffusion(
        use_timesteps=gd_respace.space_timesteps(1000, "ddim10"),  # 0, 100, ..., 900
        betas=betas,
        model_mean_type=gd_diffusion.ModelMeanType.EPSILON,
        model_var_type=gd_diffusion.ModelVarType.LEARNED_RANGE,
        loss_type=gd_diffusion.LossType.MSE,
    )
    from diffusers import DDPMScheduler

    config = dict(DDPMScheduler.load_config(CONFIG_DIR / "adm-scheduler.json"))
    scheduler = diffusion.make_scheduler(config, "ddpm")
    scheduler.set_timesteps(10)
    assert scheduler.timesteps.tolist()[:2] == [900, 800]

    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        theirs = spaced.p_mean_variance(model, x, torch.tensor([5]), clip_denoised=True)
        output = diffusion.predict(model, x, torch.tensor([500]))
        ours = scheduler.step(output, 500, x, generator=torch.Generator().manual_seed(3))
    noise = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    expected = theirs["mean"] + (0.5 * theirs["log_variance"]).exp() * noise
    difference = float((ours.prev_sample - expected).abs().max())
    print(f"DDPM step with learned variance: max abs difference {difference:.3g}")
    assert difference < 1e-4
    # The variance really is the learned one: it differs from both fixed choices.
    fixed = scheduler._get_variance(500, variance_type="fixed_small")
    assert not torch.allclose(theirs["log_variance"], fixed.log().expand_as(x), atol=1e-3)


@pytest.mark.parametrize("scheduler", ["ddim", "ddpm"])
def test_cli_paints_with_the_checkpoint(tmp_path, scheduler) -> None:
    models = write_user_files(tmp_path, 256, MULT_256)
    models.write_text(models.read_text() + f'scheduler = "{scheduler}"\n')
    out = tmp_path / "out.png"
    argv = ["a lighthouse", "-o", str(out), "--models", str(models), "--generator", "diffusion"]
    assert main([*argv, "--steps", "3", "--size", "64x64", "--cutn", "2", "-q"]) == 0
    meta = read_png_metadata(out)
    assert meta["diffusion_model"] == "adm.pt" and meta["scheduler"] == scheduler
    assert meta["size"] == "64x64"


def test_the_default_prior_is_openais_256_px_uncond_model() -> None:
    assert diffusion.DEFAULT_MODEL.endswith("/256x256_diffusion_uncond.pt")
    config = ADMConfig.from_json(diffusion.ADM_UNET)
    with torch.device("meta"):
        unet = diffusion.ADMUNet(config)
    # The published checkpoint's parameter count.
    assert sum(p.numel() for p in unet.parameters()) == 552_814_086


def test_a_checkpoint_of_another_architecture_says_which_config_to_use(tmp_path) -> None:
    models = write_user_files(tmp_path, 256, MULT_256)
    torch.save(reference_unet(512, MULT_512).state_dict(), tmp_path / "adm.pt")
    with pytest.raises(diffusion.CheckpointError, match="adm-512-uncond.json"):
        diffusion.load_model(store_for(models))
