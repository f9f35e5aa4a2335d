"""Prompt syntax and request validation: every bad input gets a message that says what to do."""

from __future__ import annotations

import math

import pytest

from generation.errors import BadRequest
from generation.prompts import Prompt, format_prompts, parse_image_prompt, parse_prompts
from generation.request import GenerationRequest, check_multiple, check_request


def test_weights_and_stops_are_parsed():
    prompts = parse_prompts("a castle:1 | fog:-0.5 | watermark:-1:-0.1")
    assert prompts == [
        Prompt("a castle", 1.0),
        Prompt("fog", -0.5),
        Prompt("watermark", -1.0, -0.1),
    ]


def test_plain_text_colons_and_urls_stay_text():
    prompts = parse_prompts("style: oil painting | see http://example.com/a.png")
    assert [p.text for p in prompts] == ["style: oil painting", "see http://example.com/a.png"]
    assert all(p.weight == 1.0 and p.stop == -math.inf for p in prompts)


def test_whitespace_is_normalised():
    assert parse_prompts("  a   red\tfox  :2 ") == [Prompt("a red fox", 2.0)]


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("castle:heavy", "not a number"),
        ("a||b", "extra '|'"),
        (":2", "no text"),
        ("fox:1e9", "between -100 and 100"),
        ("x" * 1001, "under 1000"),
        ("|".join(["a"] * 17), "at most 16"),
    ],
)
def test_bad_prompts_are_refused_with_a_hint(prompt, message):
    with pytest.raises(BadRequest, match=message):
        parse_prompts(prompt)


def test_format_round_trips():
    text = "a castle | fog:-0.5 | watermark:-1:-0.1"
    assert parse_prompts(format_prompts(parse_prompts(text))) == parse_prompts(text)


def test_image_prompt_specs():
    assert parse_image_prompt("/tmp/a.png").weight == 1.0
    spec = parse_image_prompt("C:/pics/a.png:0.5:0.1")
    assert (spec.path, spec.weight, spec.stop) == ("C:/pics/a.png", 0.5, 0.1)
    with pytest.raises(BadRequest):
        parse_image_prompt("  ")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"steps": 0}, "steps must be between"),
        ({"steps": 10**6}, "steps must be between"),
        ({"width": 8}, "width must be between"),
        ({"height": 4096}, "height must be between"),
        ({"seed": -1}, "seed must be"),
        ({"cutn": 0}, "cutn"),
        ({"learning_rate": 0.0}, "learning rate"),
        ({"optimizer": "lbfgs"}, "unknown optimizer"),
        ({"init_weight": 1.0}, "needs an init image"),
        ({"generator": "dalle"}, "unknown generator"),
        ({"skip_steps": 10, "steps": 10}, "skip steps"),
        ({"prompt": ""}, "empty"),
    ],
)
def test_check_request_refuses_bad_values(changes, message):
    request = GenerationRequest("a fox").replace(**changes)
    with pytest.raises(BadRequest, match=message):
        check_request(request, known_generators=("vqgan", "pixels"))


def test_all_zero_weights_are_refused_unless_an_image_prompt_steers():
    with pytest.raises(BadRequest, match="weight 0"):
        check_request(GenerationRequest("a:0 | b:0"))
    check_request(GenerationRequest("a:0", image_prompts=("/tmp/ref.png:1",)))


def test_check_request_accepts_defaults():
    check_request(GenerationRequest("a fox"), known_generators=("vqgan",))


def test_size_multiple_names_the_nearest_sizes():
    with pytest.raises(BadRequest, match="use 240 or 256"):
        check_multiple(GenerationRequest("x", width=250), 16, "vqgan")
    check_multiple(GenerationRequest("x", width=256, height=128), 16, "vqgan")
