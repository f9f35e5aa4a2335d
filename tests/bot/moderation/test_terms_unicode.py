"""Unicode tricks against the term filter: bidi reordering and look-alikes from Unicode's
confusables data (issue 20 item 8)."""

from __future__ import annotations

import unicodedata

import pytest

from bot import render
from bot.moderation import BlockedTerm, find_all_blocked, find_blocked
from bot.moderation.confusables import letter_fold_table
from bot.moderation.normalize import BIDI_CONTROLS, drawn_order, fold_text, shown_text
from db import Job
from tests.bot.jobrows import make_job

BLOCKED = [BlockedTerm(t) for t in ("porn", "kill", "nsfw", "shit", "ass", "butt", "sex")]

RLO, PDF, LRO, RLI, PDI = "\u202e", "\u202c", "\u202d", "\u2067", "\u2069"


@pytest.mark.parametrize(
    ("prompt", "term"),
    [
        (f"{RLO}nrop{PDF}", "porn"),  # drawn "porn"
        (f"a cat {RLO}nrop{PDF} poster", "porn"),
        (f"{RLO}llik{PDF} them", "kill"),
        (f"{RLO}wfsn", "nsfw"),  # an override left open runs to the end of the text
        (f"{RLO}wf\u200bsn{PDF}", "nsfw"),  # with a zero-width space inside as well
        (f"p{RLO}nro{PDF}", "porn"),  # only part of the word reversed: drawn "porn"
    ],
)
def test_word_drawn_by_a_right_to_left_override_is_refused(prompt: str, term: str) -> None:
    assert find_blocked(prompt, BLOCKED) == BlockedTerm(term)
    assert BlockedTerm(term) in find_all_blocked(prompt, BLOCKED)


def test_drawn_order_reverses_an_override_only() -> None:
    assert drawn_order(f"a {RLO}nrop{PDF} b").replace(RLO, "").replace(PDF, "") == "a porn b"
    # An isolate sets direction but does not reverse Latin letters, and plain text is untouched.
    assert "nrop" in drawn_order(f"{RLI}nrop{PDI}")
    assert drawn_order("plain text") == "plain text"


@pytest.mark.parametrize("control", sorted(BIDI_CONTROLS))
def test_shown_prompt_holds_no_bidi_control(control: str) -> None:
    prompt = f"a {control}nrop{PDF} lighthouse \u200bat night\U000e0041"
    shown = shown_text(prompt)
    assert not any(ch in BIDI_CONTROLS for ch in shown)
    assert not any(unicodedata.category(ch) == "Cf" for ch in shown)
    assert "lighthouse at night" in shown


def test_shown_text_keeps_emoji_joiners_and_ordinary_text() -> None:
    assert shown_text("a coder 👩\u200d💻 at work") == "a coder 👩\u200d💻 at work"
    assert shown_text("ordinary prompt, 4k") == "ordinary prompt, 4k"
    assert shown_text("مرحبا بالعالم") == "مرحبا بالعالم"


def _job(prompt: str, requester: str) -> Job:
    return make_job(prompt=prompt, extra={"requester": requester})


def test_every_shown_place_drops_bidi_controls() -> None:
    job = _job(f"a {RLO}nrop{PDF} cat", f"{RLO}nimda")
    shown = [
        render.safe_prompt(job.prompt),
        render.imagine_command(job),
        render.history_line(job),
        render.requester_name(job),
    ]
    for text in shown:
        assert not any(ch in BIDI_CONTROLS for ch in text), text
    assert "nrop" in render.safe_prompt(job.prompt)
    assert render.requester_name(job) == "nimda"


@pytest.mark.parametrize(
    ("prompt", "term"),
    [
        # Cherokee capitals (TR39 maps them to Latin; the old hand table had 15 of them)
        ("ᏚᎻᎥᎢ", "shit"),  # Ꮪ Ꮋ Ꭵ Ꭲ
        ("Ꭺss", "ass"),
        ("ᏢᎾᏒn", "porn"),
        ("Ꮶill them", "kill"),
        ("ꮪex", "sex"),  # a Cherokee small letter: case folding makes it the capital
        # Cyrillic
        ("вutt", "butt"),  # в is drawn like a small capital B
        ("КІLL", "kill"),  # І is Cyrillic: TR39 reads it as l/I
        ("ѕех", "sex"),
        ("рοгn", "porn"),  # р Cyrillic, ο Greek, г Cyrillic (reads as r)
        # Greek
        ("ΝSϜW", "nsfw"),  # Ν and the digamma Ϝ
        ("ροrn", "porn"),
        ("βutt", "butt"),
        # Latin look-alikes NFKD leaves alone
        ("ꜱʜɪᴛ", "shit"),
        ("ᴋɪʟʟ", "kill"),
        ("kıll", "kill"),  # dotless i
        ("ɑss", "ass"),  # Latin alpha
        ("ƿorn", "porn"),  # wynn, drawn like p
    ],
)
def test_look_alike_letters_are_refused(prompt: str, term: str) -> None:
    assert BlockedTerm(term) in find_all_blocked(prompt, BLOCKED), fold_text(prompt)


ORDINARY = [
    "a lighthouse in a storm at night, oil painting",
    "a fox in a snowy forest, watercolor",
    "portrait of a knight in shining armour, detailed, 8k",
    "a class of assistants passing a bass guitar",
    "Sussex countryside at dawn",
    "a skillet of eggs on a stove",
    "a button on a coat",
    "Essex coastline, 35mm photo",
    "a mountain pass in the alps",
    "cats playing chess — cinematic, 4k",
    "shiitake mushrooms on a plate",
    "a café in Paris, naïve art",
    "Ꮳherokee syllabary on a poster",
    "ποτάμι με βάρκα",
    "красивый закат над морем",
    "שלום עולם, a poster",
    "مرحبا بالعالم",
    "美しい夕日",
]


@pytest.mark.parametrize("prompt", ORDINARY)
def test_ordinary_prompts_are_not_refused(prompt: str) -> None:
    assert find_all_blocked(prompt, BLOCKED) == []


def test_fold_table_comes_from_unicode_data_not_a_short_list() -> None:
    table = letter_fold_table()
    cherokee = [chr(c) for c in range(0x13A0, 0x13F6) if c in table]
    assert len(cherokee) >= 30  # the confusables data maps dozens of Cherokee letters
    assert len(table) > 2000  # of the ~6,500 entries, those that read as ASCII
    # ASCII is never folded by it: digits and symbols are matched as stand-ins instead
    assert not any(code < 0x80 for code in table)
    assert all(value.isascii() for value in table.values())
