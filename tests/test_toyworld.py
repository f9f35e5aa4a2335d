"""The toy world in the repo: its renderer is deterministic, its judge agrees with the renderer's
labels on clean renders and refuses noise, and its models TOML loads through the project."""

from __future__ import annotations

import numpy as np

from generation.models import ModelsConfig
from toyworld import TOML
from toyworld.judge import judge, summarise, words
from toyworld.render import COLOURS, SHAPES, all_prompts, render


def test_the_renderer_is_deterministic_and_labels_its_pictures() -> None:
    first, scene, caption = render(9, 17)
    again, scene_again, caption_again = render(9, 17)
    assert np.array_equal(first, again) and scene == scene_again and caption == caption_again
    assert first.shape == (32, 32, 3) and first.dtype == np.uint8
    assert not np.array_equal(first, render(9, 18)[0])  # another index, another picture
    assert not np.array_equal(first, render(10, 17)[0])  # another seed too
    assert scene.colour != scene.background
    assert caption == f"{'an' if scene.colour == 'orange' else 'a'} {scene.colour} {scene.shape}"
    # Most of the border is the background's colour, the centre of the shape its own.
    assert len(all_prompts()) == len(COLOURS) * len(SHAPES) == 40


def test_the_judge_agrees_with_the_renderer_on_clean_renders() -> None:
    pictures, captions, truths = [], [], []
    for index in range(120):
        image, scene, caption = render(9, index)
        pictures.append(image)
        captions.append(caption)
        truths.append(scene)
    verdicts = judge(pictures, captions)
    assert [v["dominant_colour"] for v in verdicts] == [s.colour for s in truths]
    assert [v["background_colour"] for v in verdicts] == [s.background for s in truths]
    assert summarise(verdicts)["correct"] == 1.0
    # It can fail: the same pictures with the wrong shape in the prompt are all shape-wrong.
    wrong = [f"a {s.colour} {SHAPES[(SHAPES.index(s.shape) + 1) % 5]}" for s in truths]
    assert summarise(judge(pictures, wrong))["shape_correct"] == 0.0


def test_the_judge_refuses_noise() -> None:
    noise = np.random.default_rng(0).integers(0, 256, size=(40, 32, 32, 3), dtype=np.uint8)
    assert summarise(judge(list(noise), all_prompts()))["correct"] == 0.0


def test_prompts_are_read_for_their_first_colour_and_shape() -> None:
    assert words("A photo of an orange Star, at night") == ("orange", "star")
    assert words("three red circles") == ("red", "circle")
    assert words("a white cross") == ("white", "cross")
    assert words("two black crosses") == ("black", "cross")
    assert words("a lighthouse") == (None, None)


def test_the_models_toml_points_at_the_repos_artifacts() -> None:
    config = ModelsConfig.load(str(TOML))
    assert config.defaults["size"] == "32x32"
    spec = config.generators["vqgan"]["models"]["toy"]
    for path in (
        config.clip[0].config,
        TOML.parent / spec["config"],
        TOML.parent / spec["checkpoint"],
    ):
        assert path.is_file(), path
