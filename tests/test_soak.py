"""benchmarks/soak.py's judge: what counts as a job held and what as lost, and its options.

The soak itself starts the bot as a process (torch import and tiny models, about 10 s per
start on a 2-core CPU) and restarts it after each kill -9; even its smallest run takes about a
minute, so it is left to the benchmark (`python benchmarks/soak.py --quick`), not run here."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from benchmarks.soak import OTHER_FAULTS, judge, parse_args


@dataclasses.dataclass
class Attachment:
    filename: str


@dataclasses.dataclass
class Message:
    content: str = ""
    attachments: list[Attachment] = dataclasses.field(default_factory=list)
    buttons: list[str] = dataclasses.field(default_factory=list)

    def custom_ids(self) -> list[str]:
        return self.buttons


def row(**values: Any) -> dict[str, Any]:
    base = {"status": "done", "error": None, "delivery": "delivered", "output_path": None}
    return {**base, **values}


@pytest.fixture
def picture(tmp_path: Path) -> str:
    path = tmp_path / "00000001-7.png"
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buffer, "PNG")
    path.write_bytes(buffer.getvalue())
    return str(path)


def final_message() -> Message:
    return Message("Done", [Attachment("imagine-1.png")], ["job:1:reroll", "job:1:variation"])


def test_a_delivered_picture_with_a_whole_png_is_held(picture: str) -> None:
    assert judge(row(output_path=picture), final_message()) == (None, None)


def test_jobs_that_did_not_end_are_lost() -> None:
    for status in ("queued", "running"):
        lost, _ = judge(row(status=status), None)
        assert lost == f"still {status}"


def test_a_failure_without_a_reason_is_lost() -> None:
    lost, _ = judge(row(status="failed", error="  "), Message("could not be made: "))
    assert lost == "failed without a reason"


def test_an_undelivered_or_broken_picture_is_lost(picture: str, tmp_path: Path) -> None:
    lost, _ = judge(row(output_path=picture, delivery="undelivered"), final_message())
    assert lost == "done, delivery undelivered"
    cut = tmp_path / "cut.png"
    cut.write_bytes(Path(picture).read_bytes()[:40])  # a PNG cut short by a full disk
    lost, _ = judge(row(output_path=str(cut)), final_message())
    assert lost == "done, but its PNG on disk is cut short"


def test_an_ending_the_user_never_saw_is_reported() -> None:
    held_failure = row(status="failed", error="the disk is full")
    assert judge(held_failure, Message("<@1> the picture could not be made: disk full")) == (
        None,
        None,
    )
    lost, untold = judge(held_failure, Message("Queued: 1st."))
    assert lost is None and untold == "failed: last message 'Queued: 1st.'"
    assert judge(row(status="cancelled"), Message("Cancelled by its requester."))[1] is None
    assert judge(row(status="cancelled"), None)[1] == "cancelled: last message None"


def test_default_plan_is_the_issue_load_and_quick_is_smaller() -> None:
    full = parse_args([])
    assert (full.jobs, full.users, full.minutes, full.kills) == (500, 100, 10.0, 5)
    quick = parse_args(["--quick", "--users", "7"])
    assert quick.users == 7 and quick.jobs < full.jobs and quick.minutes < full.minutes
    assert parse_args(["--faults", "hang,db_locked"]).faults == ("hang", "db_locked")
    assert set(OTHER_FAULTS) >= {"hang", "storm429", "storm5xx", "disk_full", "db_locked"}


def test_bad_fault_names_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--faults", "meteor"])
    assert "unknown fault 'meteor'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--faults", "ray_actor"])
    assert "needs --ray" in capsys.readouterr().err
