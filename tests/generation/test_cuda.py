"""CUDA paths: mixed precision, the VQGAN cuDNN switch and out-of-memory recovery.
Skipped where no GPU is present."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from generation.engine import generate
from generation.errors import OutOfMemory
from generation.generators import vqgan
from generation.models import ModelsConfig, ModelStore
from tests.generation.generator_helpers import request

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture(scope="module")
def cuda_store() -> ModelStore:
    return ModelStore(ModelsConfig.load("tiny"), device="cuda")


def test_autocast_run_is_finite_and_fills_the_result(cuda_store) -> None:
    assert cuda_store.autocast_dtype in (torch.bfloat16, torch.float16)
    result = generate(request("vqgan", steps=5, width=64, height=64, cutn=8), cuda_store)
    assert math.isfinite(result.loss) and result.clip_score is not None
    assert result.image.size == (64, 64)


def test_autocast_off_and_cudnn_off_also_run() -> None:
    base = ModelsConfig.load("tiny")
    cuda = dataclasses.replace(base.cuda, autocast="off", vqgan_cudnn="off")
    store = ModelStore(dataclasses.replace(base, cuda=cuda), device="cuda")
    assert store.autocast_dtype is None and not store.vqgan_cudnn_enabled()
    result = generate(request("vqgan", steps=2, width=64, height=64), store)
    assert math.isfinite(result.loss)


def test_out_of_memory_is_reported_and_the_next_job_runs(cuda_store) -> None:
    cuda_store.perceptor(), vqgan.load_model(cuda_store)  # models in place before memory is capped
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    # Cap this process to what it holds now plus 64 MiB: a 1024 px run cannot fit.
    fraction = (torch.cuda.memory_reserved() + 64 * 2**20) / total
    torch.cuda.set_per_process_memory_fraction(fraction)
    try:
        with pytest.raises(OutOfMemory, match="ran out of memory"):
            generate(request("vqgan", steps=2, width=1024, height=1024, cutn=256), cuda_store)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    result = generate(request("vqgan", steps=2, width=64, height=64), cuda_store)
    assert result.steps_done == 2
