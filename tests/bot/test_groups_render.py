"""The pure parts of /imagine count:N: grid layout, the group's messages and buttons, the
bot's own range check of count."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from bot import grouprender
from bot.admission import BotLimits, Refused
from bot.grid import canvas_size, cell_origins, grid_shape, make_grid
from bot.render import BUTTONS_GROUP, BUTTONS_NONE
from bot.replies import to_files
from bot.ui import job_view
from tests.bot.jobrows import make_job


def png(width: int, height: int, color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format="PNG")
    return out.getvalue()


def group(statuses: list[str], **changes: object) -> list[object]:
    base = dict(prompt="a fox", steps=8, width=64, height=64, user_id=7, group_id=10)
    base.update(changes)
    return [
        make_job(
            id=10 + i,
            seed=100 + i,
            status=status,
            group_index=i,
            group_size=len(statuses),
            started_at=1.0,
            finished_at=3.5 + i,
            **base,
        )  # fmt: skip
        for i, status in enumerate(statuses)
    ]


@pytest.mark.parametrize(
    ("count", "shape"), [(1, (1, 1)), (2, (2, 1)), (3, (2, 2)), (4, (2, 2)), (5, (3, 2))]
)
def test_grid_shape_is_as_square_as_possible(count: int, shape: tuple[int, int]) -> None:
    assert grid_shape(count) == shape


def test_grid_cells_and_canvas() -> None:
    assert cell_origins(3, (64, 32), gap=4) == [(4, 4), (72, 4), (4, 40)]
    assert canvas_size(3, (64, 32), gap=4) == (140, 76)
    with pytest.raises(ValueError):
        grid_shape(0)


def test_make_grid_places_each_picture_in_its_cell_and_leaves_missing_ones_empty() -> None:
    red, blue = png(8, 8, (255, 0, 0)), png(8, 8, (0, 0, 255))
    with Image.open(io.BytesIO(make_grid([red, b"", blue], gap=2))) as grid:
        assert grid.size == (2 + 2 * 10, 2 + 2 * 10)
        assert grid.getpixel((5, 5)) == (255, 0, 0)  # first cell
        assert grid.getpixel((15, 5)) == (43, 45, 49)  # second cell: nothing yet
        assert grid.getpixel((5, 15)) == (0, 0, 255)  # third cell, second row
    with pytest.raises(ValueError):
        make_grid([b"", b""])


def test_final_shows_the_grid_the_files_and_numbered_buttons_and_says_who_failed() -> None:
    rows = group(["done", "failed", "done"])
    rows[1] = make_job(**{**rows[1].__dict__, "error": "the GPU ran out of memory"})  # type: ignore[attr-defined]
    pictures = {rows[0].id: png(4, 4, (1, 2, 3)), rows[2].id: png(4, 4, (3, 2, 1))}  # type: ignore[attr-defined]
    verdicts = {rows[0].id: "show", rows[2].id: "spoiler"}  # type: ignore[attr-defined]
    rendered = grouprender.final(rows, pictures, verdicts, b"grid")  # type: ignore[arg-type]
    assert rendered.content.startswith("<@7> 2 of 3 pictures are ready.")
    assert "Picture 2 could not be made: the GPU ran out of memory" in rendered.content
    assert rendered.filename == "imagine-grid-10.png" and rendered.png == b"grid"
    assert [(f.filename, f.spoiler) for f in rendered.files] == [
        ("imagine-10-100.png", False),
        ("imagine-12-102.png", True),
    ]
    assert rendered.buttons == BUTTONS_GROUP and rendered.members == ((1, 10), (3, 12))
    assert rendered.embed is not None and rendered.embed.title == "3 pictures #10–#12"
    assert ("Seeds", "100, 101, 102", True) in rendered.embed.fields
    # A spoilered picture is sent as Discord spoilers are: its file name starts with SPOILER_.
    assert [f.filename for f in to_files(rendered)] == [
        "imagine-grid-10.png",
        "imagine-10-100.png",
        "SPOILER_imagine-12-102.png",
    ]


def test_a_group_all_cancelled_or_failed_has_no_buttons() -> None:
    cancelled = grouprender.final(group(["cancelled", "cancelled"]), {}, {}, None)  # type: ignore[arg-type]
    assert cancelled.content == "Cancelled by its requester." and cancelled.buttons == BUTTONS_NONE
    failed = grouprender.final(group(["failed", "cancelled"]), {}, {}, None)  # type: ignore[arg-type]
    assert "none of the 2 pictures can be shown" in failed.content
    assert failed.buttons == BUTTONS_NONE and failed.png is None


def test_group_buttons_are_a_reroll_row_and_a_variation_row_naming_each_pictures_job() -> None:
    view = job_view(10, BUTTONS_GROUP, ((1, 10), (2, 11), (4, 13)))
    assert view is not None
    items = [(i.item.custom_id, i.item.label, i.item.row) for i in view.children]  # type: ignore[attr-defined]
    assert items == [
        ("job:10:reroll", "Re-roll 1", 0),
        ("job:11:reroll", "Re-roll 2", 0),
        ("job:13:reroll", "Re-roll 4", 0),
        ("job:10:variation", "Variation 1", 1),
        ("job:11:variation", "Variation 2", 1),
        ("job:13:variation", "Variation 4", 1),
    ]
    with pytest.raises(ValueError):
        job_view(10, BUTTONS_GROUP, tuple((i, i) for i in range(1, 7)))


def test_the_acknowledgement_names_every_seed() -> None:
    leader = group(["queued", "queued", "queued"])[0]
    rendered = grouprender.queued(leader, 2)  # type: ignore[arg-type]
    assert rendered.content == "Queued 3 pictures: #2 in line."
    assert rendered.embed is not None and ("Seeds", "100, 101, 102", True) in rendered.embed.fields
    assert rendered.waiting and rendered.job_id == 10


def test_running_shows_the_slowest_picture_and_the_failed_ones() -> None:
    rows = group(["running", "running", "failed"])
    steps = {10: grouprender.Step(4, 8, 2.0), 11: grouprender.Step(2, 8, 6.0)}
    rendered = grouprender.running(rows[0], rows, steps, b"preview")  # type: ignore[arg-type]
    assert rendered.content.startswith("Painting 2 pictures: step 2/8 (25%), about 6.0 s left.")
    assert "Picture 3 could not be made" in rendered.content
    assert rendered.filename == "progress-10.png" and rendered.job_id == 10


def test_the_bot_checks_count_itself() -> None:
    limits = BotLimits()
    limits.check_count(1)
    limits.check_count(4)
    for bad in (0, 5, -1):
        with pytest.raises(Refused, match="count must be from 1 to 4"):
            limits.check_count(bad)
