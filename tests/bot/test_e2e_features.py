"""End to end through the fake Discord: /help, the requester's name in the footer, /history
lines that make the picture again, Delete, Edit prompt (a modal), and the message context menu
"Imagine from this image"."""

from __future__ import annotations

import db
from bot import render
from tests.bot.conftest import PNG_SIGNATURE, Harness, file_bytes, is_file, is_final
from tests.bot.jobrows import make_job
from tests.fakediscord import Permissions
from tests.fakediscord.tinybot import make_png

MENU = "Imagine from this image"


async def finished_picture(harness: Harness, **options: object) -> tuple[object, db.Job]:
    handle = await harness.imagine(**options)
    final = await handle.wait_for_original(is_final, timeout=60)
    job = await harness.job_of(handle)
    done = await harness.wait_job_status(job.id, "done")
    return final, done


async def test_help_lists_the_commands_and_this_bots_limits(harness: Harness) -> None:
    handle = await harness.fake.send_slash_command("help")
    data = (await handle.wait_for_callback()).json["data"]
    assert data["flags"] & 64
    text = "\n".join(f["name"] + " " + f["value"] for f in data["embeds"][0]["fields"])
    assert "/imagine" in text and "steps` (1-500, default 12)" in text
    assert "64x64, 96x64" in text and MENU in text and "Delete" in text


async def test_footer_names_the_requester_and_history_reproduces_the_picture(
    harness: Harness,
) -> None:
    ada = harness.fake.add_member("ada", nick="Ada L.")
    final, job = await finished_picture(
        harness, prompt="a `quiet` harbour", steps=4, seed=77, size="96x64", member=ada
    )
    assert final.embeds[0]["footer"]["text"] == "Requested by Ada L."  # type: ignore[attr-defined]
    history = await harness.fake.send_slash_command("history", member=ada)
    content = (await history.wait_for_callback()).json["data"]["content"]
    assert (
        f"`/imagine prompt:a 'quiet' harbour seed:77 steps:4 size:96x64 generator:{job.generator}`"
        in content
    )


def test_history_line_names_every_option_and_the_images_to_attach() -> None:
    job = make_job(
        id=5, prompt="a fox", seed=9, steps=30, width=64, height=96, generator="pixels",
        init_image="/in/a.png", extra={"strength": 0.4},
    )  # fmt: skip
    line = render.history_line(job, 0.31)
    assert line.startswith("**#5** 64×96, pixels, 30 steps, score 0.310\n")
    assert (
        "`/imagine prompt:a fox seed:9 steps:30 size:64x96 generator:pixels strength:0.4`" in line
    )
    assert line.endswith("Attach the same init_image too.")
    assert render.requester_name(make_job(user_id=3)) == "user 3"


async def test_delete_is_for_the_requester_and_moderators(harness: Harness) -> None:
    fake = harness.fake
    final, job = await finished_picture(harness, prompt="a lone tree", steps=4)
    assert job.output_path is not None and is_file(job.output_path)
    stranger = fake.add_member("mallory")
    refused = await fake.click_button(final, f"job:{job.id}:delete", member=stranger)
    data = (await refused.wait_for_callback()).json["data"]
    assert data["flags"] & 64 and "can delete it" in data["content"]
    assert not fake.get_message(final.id).deleted  # type: ignore[attr-defined]

    moderator = fake.add_member("mod", permissions=Permissions.MANAGE_MESSAGES)
    other, theirs = await finished_picture(harness, prompt="a second tree", steps=4)
    by_mod = await fake.click_button(other, f"job:{theirs.id}:delete", member=moderator)
    assert (await by_mod.wait_for_callback()).ok
    await fake.wait_until(lambda: fake.get_message(other.id).deleted, timeout=10, what="delete")  # type: ignore[attr-defined]

    mine = await fake.click_button(final, f"job:{job.id}:delete")  # the requester
    assert (await mine.wait_for_callback()).ok
    await fake.wait_until(lambda: fake.get_message(final.id).deleted, timeout=10, what="delete")  # type: ignore[attr-defined]
    row = await db.get_job(harness.conn, job.id)
    assert row is not None and row.expired_at is not None
    assert not is_file(job.output_path)


async def test_edit_prompt_opens_a_prefilled_modal_then_paints_the_new_prompt(
    harness: Harness,
) -> None:
    fake = harness.fake
    final, parent = await finished_picture(harness, prompt="a red kite", steps=4, seed=21)
    bob = fake.add_member("bob")
    opener = await fake.click_button(final, f"job:{parent.id}:edit", member=bob)
    assert (await opener.wait_for_callback()).ok
    assert opener.modal is not None and opener.modal["custom_id"] == f"job:{parent.id}:editmodal"
    inputs = [c for row in opener.modal["components"] for c in _inputs(row)]
    assert [i["value"] for i in inputs if i["custom_id"] == "prompt"] == ["a red kite"]

    submit = await fake.submit_modal(opener, {"prompt": "a blue kite at dusk"})
    assert (await submit.wait_for_callback()).ok
    edited = await harness.job_of(submit)
    assert (edited.prompt, edited.seed, edited.steps) == ("a blue kite at dusk", 21, 4)
    assert edited.parent_job_id == parent.id and edited.user_id == bob.user.id
    picture = await submit.wait_for_original(is_final, timeout=60)
    assert picture.attachment_data(0).startswith(PNG_SIGNATURE)


def _inputs(component: dict[str, object]) -> list[dict[str, object]]:
    if component.get("type") == 4:
        return [component]
    inner = component.get("components") or (
        [component["component"]] if "component" in component else []
    )
    return [i for c in inner for i in _inputs(c)]  # type: ignore[arg-type]


async def test_imagine_from_this_image_uses_the_picture_as_init_image(harness: Harness) -> None:
    fake = harness.fake
    final, parent = await finished_picture(harness, prompt="a white cliff", steps=4)
    opener = await fake.send_message_command(MENU, final)
    assert (await opener.wait_for_callback()).ok and opener.modal is not None
    submit = await fake.submit_modal(opener, {"prompt": "the cliff at night", "use_as": "init"})
    child = await harness.job_of(submit)
    assert child.prompt == "the cliff at night" and child.init_image is not None
    assert child.image_prompts == ()
    assert parent.output_path is not None
    assert file_bytes(child.init_image) == file_bytes(parent.output_path)
    await harness.wait_job_status(child.id, "done")


async def test_imagine_from_a_users_image_as_style_and_refusals(harness: Harness) -> None:
    fake = harness.fake
    upload = fake.make_attachment(make_png(64, 64, (200, 30, 30)), "red.png")
    posted = await fake.send_user_message("look at this", files=[upload])
    opener = await fake.send_message_command(MENU, posted)
    await opener.wait_for_callback()
    wrong = await fake.submit_modal(opener, {"prompt": "a red sea", "use_as": "sideways"})
    data = (await wrong.wait_for_callback()).json["data"]
    assert data["flags"] & 64 and "Type init" in data["content"]

    opener = await fake.send_message_command(MENU, posted)
    await opener.wait_for_callback()
    styled = await fake.submit_modal(opener, {"prompt": "a red sea", "use_as": "style"})
    child = await harness.job_of(styled)
    assert child.init_image is None and len(child.image_prompts) == 1
    assert file_bytes(child.image_prompts[0]).startswith(PNG_SIGNATURE)

    text_only = await fake.send_user_message("no picture here")
    refused = await fake.send_message_command(MENU, text_only)
    data = (await refused.wait_for_callback()).json["data"]
    assert data["flags"] & 64 and "has no image attached" in data["content"]
    await harness.wait_job_status(child.id, "done")
