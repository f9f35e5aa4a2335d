"""CLIP as a judge: zero-shot ranking of captions, and the CLIP score of an image."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from generation.engine import prompt_score
from generation.errors import BadRequest
from generation.judge import MAX_CAPTIONS, clip_score, logit_scale, rank_captions
from tests.generation.generator_helpers import (  # noqa: F401 - one_torch_thread is autouse
    PROMPT,
    one_torch_thread,
    request,
    run,
    tiny_store,
)

CAPTIONS = [PROMPT, "a city skyline at night", "a bowl of soup", "an old sailing ship"]


def noise_image(seed: int, size: tuple[int, int] = (32, 32)) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=generator, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy(), mode="RGB")


@pytest.fixture(scope="module")
def painting() -> tuple[Image.Image, Image.Image]:
    """(start, end) of a pixels run optimised toward PROMPT with the same tiny CLIP."""
    result, frames = run(tiny_store(), request("pixels", steps=15))
    return frames[0].image, result.image


def test_ranking_is_ordered_and_the_shares_add_up_to_100() -> None:
    ranking = rank_captions(tiny_store(), noise_image(0), CAPTIONS)
    shares = [share for _, share in ranking]
    assert sorted(caption for caption, _ in ranking) == sorted(CAPTIONS)
    assert shares == sorted(shares, reverse=True)
    assert sum(shares) == pytest.approx(100.0, abs=1e-3)
    assert all(0 < share < 100 for share in shares)


def test_painting_toward_a_caption_raises_its_share(painting) -> None:
    # A random tiny CLIP's captions all sit close together, so the painted caption need not
    # win outright; its share must still grow as CLIP guidance paints toward it.
    start, end = painting
    before = dict(rank_captions(tiny_store(), start, CAPTIONS))[PROMPT]
    after = dict(rank_captions(tiny_store(), end, CAPTIONS))[PROMPT]
    assert after > before * 1.2


def test_painting_toward_a_prompt_raises_its_clip_score(painting) -> None:
    start, end = painting
    assert clip_score(tiny_store(), end, PROMPT) > clip_score(tiny_store(), start, PROMPT) + 0.02


def test_shares_do_not_depend_on_the_order_of_the_captions() -> None:
    image = noise_image(1)
    forward = dict(rank_captions(tiny_store(), image, CAPTIONS))
    backward = dict(rank_captions(tiny_store(), image, CAPTIONS[::-1]))
    for caption in CAPTIONS:
        assert forward[caption] == pytest.approx(backward[caption], abs=1e-4)


def test_shares_follow_clip_softmax_with_the_models_temperature() -> None:
    """Two captions: the share ratio is exp(scale * (cos_a - cos_b)), CLIP's classifier."""
    store = tiny_store()
    image = noise_image(2)
    a, b = CAPTIONS[:2]
    shares = dict(rank_captions(store, image, [a, b]))
    cos_a, cos_b = clip_score(store, image, a), clip_score(store, image, b)
    scale = logit_scale(store.perceptor().models[0].model)
    assert math.log(shares[a] / shares[b]) == pytest.approx(scale * (cos_a - cos_b), abs=1e-3)


def test_repeated_captions_are_ranked_once() -> None:
    ranking = rank_captions(tiny_store(), noise_image(3), ["a cat", "a  cat ", "a dog"])
    assert [caption for caption, _ in ranking].count("a cat") == 1
    assert len(ranking) == 2


def test_wide_images_are_judged_by_their_centre_square() -> None:
    centre = noise_image(4)
    wide = Image.new("RGB", (96, 32))
    wide.paste(noise_image(5), (0, 0))
    wide.paste(centre, (32, 0))
    wide.paste(noise_image(6), (64, 0))
    on_wide = dict(rank_captions(tiny_store(), wide, CAPTIONS))
    on_centre = dict(rank_captions(tiny_store(), centre, CAPTIONS))
    for caption in CAPTIONS:
        assert on_wide[caption] == pytest.approx(on_centre[caption], abs=1e-3)


@pytest.mark.parametrize(
    ("captions", "message"),
    [
        (["only one"], "at least two"),
        (["a cat", "a cat"], "at least two"),
        (["a cat", "   "], "empty"),
        (["a cat", "x" * 400], "characters"),
        ([f"caption {i}" for i in range(MAX_CAPTIONS + 1)], "at most"),
    ],
)
def test_bad_caption_lists_are_refused_with_a_fix(captions: list[str], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        rank_captions(tiny_store(), noise_image(0), captions)


def test_clip_score_is_a_cosine_and_matches_the_engines_score() -> None:
    store = tiny_store()
    result, _ = run(store, request("pixels", steps=2, prompt="a fox:2 | snow | blur:-1"))
    score = clip_score(store, result.image, result.request.prompt)
    assert -1 <= score <= 1
    assert score == pytest.approx(prompt_score(store, result), abs=1e-6)


def test_clip_score_weights_the_positive_parts() -> None:
    store = tiny_store()
    image = noise_image(7)
    fox, snow = clip_score(store, image, "a fox"), clip_score(store, image, "snow")
    assert clip_score(store, image, "a fox:3 | snow | blur:-1") == pytest.approx(
        (3 * fox + snow) / 4, abs=1e-5
    )


def test_clip_score_needs_a_positive_part() -> None:
    with pytest.raises(BadRequest, match="positive"):
        clip_score(tiny_store(), noise_image(0), "blurry:-1")


def test_logit_scale_is_the_learned_temperature_capped_at_100() -> None:
    model = torch.nn.Module()
    model.logit_scale = torch.nn.Parameter(torch.tensor(math.log(20.0)))
    assert logit_scale(model) == pytest.approx(20.0)
    model.logit_scale = torch.nn.Parameter(torch.tensor(math.log(500.0)))
    assert logit_scale(model) == 100.0
    assert logit_scale(torch.nn.Module()) == 100.0
