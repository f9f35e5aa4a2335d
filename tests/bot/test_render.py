"""render: job state -> message content, embed and file (pure)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from bot import render
from tests.bot.jobrows import make_job


@dataclass(frozen=True)
class Frame:
    step: int
    total: int
    eta: float
    png: bytes


@dataclass(frozen=True)
class Finished:
    png: bytes
    width: int
    height: int
    seed: int
    steps_done: int
    elapsed: float
    clip_score: float | None


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.04, "0.0 s"),
        (9.96, "10.0 s"),
        (12.34, "12 s"),
        (60, "1 min"),
        (125, "2 min 5 s"),
        (3600, "1 h"),
        (3720, "1 h 2 min"),
        (None, "unknown"),
        (float("nan"), "unknown"),
        (float("inf"), "unknown"),
        (-1, "unknown"),
    ],
)
def test_format_duration(seconds: float | None, text: str) -> None:
    assert render.format_duration(seconds) == text


def test_queued_shows_place_and_cancel() -> None:
    job = make_job(id=12)
    first = render.queued(job, 1)
    assert "next in line" in first.content
    assert first.buttons == render.BUTTONS_CANCEL
    assert first.job_id == 12
    assert first.png is None
    third = render.queued(job, 3, eta=125)
    assert "#3 in line" in third.content
    assert "2 min 5 s" in third.content
    assert third.embed is not None
    assert job.prompt in (third.embed.description or "")
    assert ("Seed", "42", True) in third.embed.fields


def test_running_without_and_with_frame() -> None:
    job = make_job(status="running")
    start = render.running(job)
    assert "starting" in start.content
    assert start.png is None
    frame = Frame(step=40, total=200, eta=12.0, png=b"\x89PNG-frame")
    shown = render.running(job, frame)
    assert "step 40/200" in shown.content
    assert "20%" in shown.content
    assert "12 s" in shown.content
    assert shown.png == b"\x89PNG-frame"
    assert shown.filename == render.progress_filename(job)
    assert shown.embed is not None and shown.embed.image == shown.filename
    assert shown.buttons == render.BUTTONS_CANCEL


def test_done_has_image_parameters_and_buttons() -> None:
    job = make_job(id=5, seed=99, generator="pixels")
    finished = Finished(
        png=b"png", width=64, height=48, seed=99, steps_done=20, elapsed=3.25, clip_score=0.31234
    )
    shown = render.done(job, finished)
    assert shown.png == b"png"
    assert shown.buttons == render.BUTTONS_DONE
    assert shown.embed is not None
    fields = {name: value for name, value, _ in shown.embed.fields}
    assert fields == {
        "Seed": "99",
        "Steps": "20",
        "Generator": "pixels",
        "Size": "64×48",
        "Time": "3.2 s",
        "CLIP score": "0.312",
    }
    assert shown.embed.image == shown.filename
    assert job.prompt in (shown.embed.description or "")
    assert shown.content.startswith("<@1001>")


def test_done_without_score_and_spoilered() -> None:
    job = make_job()
    finished = Finished(
        png=b"png", width=64, height=64, seed=1, steps_done=5, elapsed=1.0, clip_score=None
    )
    shown = render.done(job, finished, spoiler=True)
    assert shown.spoiler
    assert shown.embed is not None
    assert shown.embed.image is None  # an embed image would show the picture unblurred
    assert "CLIP score" not in {name for name, _, _ in shown.embed.fields}


def test_failed_cancelled_restarted_withheld() -> None:
    job = make_job(user_id=5)
    failed = render.failed(job, "the GPU ran out of memory; try a smaller size")
    assert "ran out of memory" in failed.content
    assert failed.buttons == render.BUTTONS_NONE
    assert "<@5>" in failed.content
    assert render.cancelled(job, 5).content == "Cancelled by its requester."
    assert render.cancelled(job, 77).content == "Cancelled by <@77>."
    assert render.cancelled(job, 77).buttons == render.BUTTONS_NONE
    again = render.restarted(job, 2)
    assert "restarted" in again.content and "#2 in line" in again.content
    assert again.buttons == render.BUTTONS_CANCEL
    withheld = render.withheld(job)
    assert withheld.png is None and "withheld" in withheld.content


def test_prompt_markdown_and_mentions_are_defused_and_capped() -> None:
    job = make_job(prompt="**bold** @everyone " + "x" * 3000)
    shown = render.queued(job, 1)
    assert shown.embed is not None
    description = shown.embed.description or ""
    assert "@everyone" not in description  # escape_mentions inserts a zero-width space
    assert "\\*\\*bold\\*\\*" in description
    assert len(description) <= render.DESCRIPTION_LIMIT
    assert description.endswith("…")


def test_channel_fallback_mentions_requester_once() -> None:
    job = make_job(user_id=9)
    progress = render.running(job)
    moved = render.channel_fallback(progress, 9)
    assert moved.content.startswith("<@9> ")
    assert moved.embed == progress.embed and moved.buttons == progress.buttons
    finished = Finished(
        png=b"p", width=1, height=1, seed=1, steps_done=1, elapsed=1, clip_score=None
    )
    final = render.done(job, finished)
    assert render.channel_fallback(final, 9).content.count("<@9>") == 1
