"""/imagine generator:clipgen end to end through the fake Discord with the tiny models: the
command offers it (the fake refuses a value that is not one of the command's choices), the
picture has the model's size, and Variation conditions a new picture on the finished one."""

from __future__ import annotations

import io

from PIL import Image

from generation.png import read_png_metadata
from tests.bot.conftest import Harness, file_bytes, is_final


async def test_imagine_with_clipgen_then_a_variation(harness: Harness) -> None:
    fake = harness.fake
    handle = await harness.imagine(prompt="a red fox", generator="clipgen", size="64x64", seed=3)
    assert (await handle.wait_for_callback()).ok
    final = await handle.wait_for_original(is_final, timeout=60)
    job = await harness.job_of(handle)
    assert job.generator == "clipgen"
    image = Image.open(io.BytesIO(final.attachment_data(0)))
    assert image.size == (64, 64)  # the tiny model's size
    fields = {f["name"]: f["value"] for f in final.embeds[0]["fields"]}
    assert fields["Generator"] == "clipgen"
    done = await harness.wait_job_status(job.id, "done")
    assert done.output_path is not None
    meta = read_png_metadata(file_bytes(done.output_path))
    assert meta["generator"] == "clipgen" and meta["conditioning"] == "text"

    variation = await fake.click_button(final, f"job:{job.id}:variation")
    assert (await variation.wait_for_callback()).ok
    varied = await harness.job_of(variation)
    assert varied.generator == "clipgen" and varied.init_image == done.output_path
    await variation.wait_for_original(is_final, timeout=60)
    varied_done = await harness.wait_job_status(varied.id, "done")
    assert varied_done.output_path is not None
    varied_meta = read_png_metadata(file_bytes(varied_done.output_path))
    assert varied_meta["conditioning"] == "init image"
