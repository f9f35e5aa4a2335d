"""Blocked-term matching: what must be refused, what must not, and the term rules."""

from __future__ import annotations

import pytest

from bot.moderation import (
    MAX_TERM_LENGTH,
    BlockedTerm,
    MatchMode,
    compile_terms,
    find_all_blocked,
    find_blocked,
    normalize_term,
)

WORD_TERMS = [
    "ass",
    "nsfw",
    "porn",
    "shit",
    "kill",
    "cock",
    "rape",
    "rapist",
    "cunt",
    "anal",
    "tit",
    "cum",
    "hell",
    "sex",
    "coon",
    "butt",
    "a-hole",
    "1488",
    "blood bath",
]
BLOCKED = [BlockedTerm(term) for term in WORD_TERMS]

# (prompt, the blocked term it must be refused for)
REFUSED = [
    # letter case
    ("NSFW art of a cat", "nsfw"),
    ("a PoRn poster", "porn"),
    # accents and other diacritics
    ("nśfw", "nsfw"),
    ("pörn magazine", "porn"),
    ("shït happens", "shit"),
    ("çöçk", "cock"),
    # fullwidth and other compatibility forms, fancy-text letters
    ("ＮＳＦＷ", "nsfw"),
    ("𝐧𝐬𝐟𝐰 𝐩𝐢𝐜", "nsfw"),
    ("ⓟⓞⓡⓝ", "porn"),
    ("ɴꜱꜰᴡ", "nsfw"),
    ("🇳🇸🇫🇼", "nsfw"),
    # confusable letters from other scripts
    ("Рorn", "porn"),  # Cyrillic Р
    ("аss", "ass"),  # Cyrillic а
    ("ѕһіt", "shit"),  # Cyrillic ѕ һ і
    ("ροrn", "porn"),  # Greek ρ ο
    ("ΝSFW", "nsfw"),  # Greek capital Ν
    ("kіll them", "kill"),  # Cyrillic і
    # zero-width and other invisible characters
    ("n\u200bs\u200bf\u200bw", "nsfw"),  # zero-width space
    ("p\u200corn", "porn"),  # zero-width non-joiner
    ("po\u200drn", "porn"),  # zero-width joiner
    ("sh\u2060it", "shit"),  # word joiner
    ("as\u00ads", "ass"),  # soft hyphen
    ("\ufeffnsfw", "nsfw"),  # byte-order mark
    ("n\ufe0fs\ufe0ff\ufe0fw", "nsfw"),  # variation selectors
    ("k\u180eill", "kill"),  # Mongolian vowel separator
    ("p\u3164orn", "porn"),  # Hangul filler
    # spaces between the letters of a spelled-out word
    ("n s f w", "nsfw"),
    ("draw a n s f w cat", "nsfw"),
    ("a s s", "ass"),
    ("p o r n pics", "porn"),
    ("n. s. f. w.", "nsfw"),
    ("1 4 8 8 tattoo", "1488"),
    # punctuation or symbols inside a word
    ("n.s.f.w", "nsfw"),
    ("n-s-f-w", "nsfw"),
    ("n_s_f_w", "nsfw"),
    ("n*s*f*w", "nsfw"),
    ("sh.it", "shit"),
    ("p/o/r/n", "porn"),
    ("n🍆s🍆f🍆w", "nsfw"),
    ("a.hole", "a-hole"),
    ("ahole", "a-hole"),
    # digit and symbol swaps
    ("p0rn", "porn"),
    ("sh1t", "shit"),
    ("5h!t", "shit"),
    ("@$$", "ass"),
    ("a$$", "ass"),
    ("4ss", "ass"),
    ("n5fw", "nsfw"),
    ("c0ck", "cock"),
    ("r@pe", "rape"),
    ("k1ll", "kill"),
    ("ki||", "kill"),
    ("k111 them all", "kill"),  # one "1" as i, two as l
    ("shi7", "shit"),
    ("shi+", "shit"),
    ("8utt", "butt"),
    ("s3x", "sex"),
    # stretched letters
    ("nsssfw", "nsfw"),
    ("asssss", "ass"),
    ("pooorn", "porn"),
    ("shiiiiit", "shit"),
    ("a.s.s.s.s.s", "ass"),
    # tricks combined
    ("Ｎ.ѕ.F.\u200bw", "nsfw"),
    ("p 0 r n", "porn"),
    ("@.$.$", "ass"),
    ("ѕ\u200bh\u200b1\u200bt", "shit"),
    ("𝐚$$", "ass"),
    ("ᴘ0ʀɴ", "porn"),
    ("Ｓ Ｈ １ Ｔ", "shit"),
    ("Ⓚ!ⓛⓛ", "kill"),
    ("🇳 5 f w", "nsfw"),
    ("ⓟ.0.ʀ.ո", "porn"),  # circled p, zero, small-capital r, Armenian ո
    ("n\u200b.\u200bs\u200b.\u200bs\u200b.\u200bs\u200b.f.w", "nsfw"),
    # whole words next to punctuation, and plurals
    ("ass!", "ass"),
    ("(ass)", "ass"),
    ("'ass'", "ass"),
    ("shit-faced", "shit"),
    ("asses", "ass"),
    ("tits", "tit"),
    ("cocks", "cock"),
    # multi-word terms
    ("bloodbath", "blood bath"),
    ("blood-bath", "blood bath"),
    ("BLOOD   BATH", "blood bath"),
    ("Blood_Bath", "blood bath"),
    ("a blood, bath scene", "blood bath"),
    ("b l o o d bath", "blood bath"),
    ("bl00d b@th", "blood bath"),
]

INNOCENT = [
    "a lighthouse in a storm, oil painting",
    "class photo of a school",
    "a classic car",
    "an assassin in the shadows",
    "a bass guitar",
    "a secret passage",
    "a robot assistant",
    "tall grass in the wind",
    "the Massachusetts coast",
    "the embassy building",
    "a sassy cat",
    "Scunthorpe United",
    "a therapist's office",
    "a cocktail at sunset",
    "a peacock feather",
    "the Hancock tower",
    "a shuttlecock",
    "a bunch of grapes",
    "velvet drapes",
    "a knee scrape",
    "a trapeze artist",
    "data analysis",
    "a venice canal",
    "a banal scene",
    "shitake mushrooms",
    "a book title",
    "a titan",
    "a titmouse bird",
    "a petition",
    "the constitution",
    "a cucumber salad",
    "a document on a desk",
    "cumulus clouds",
    "hello kitty",
    "a sea shell",
    "the Hellenic coast",
    "Sussex countryside",
    "an old sextant",
    "a raccoon",
    "a silk cocoon",
    "a tycoon in a top hat",
    "a skill tree",
    "a killer whale",
    "a kiln for pottery",
    "a button",
    "butter on toast",
    "a cunning fox",
    "the annals of history",  # a doubled letter is not read as one: "annals" is not "anals"
    "i was sad",
    "it was s fine day",  # one single letter between words: nothing is joined
    "as soon as possible",
    "a road shaped as s curve",
    "a hole in the ground",  # "a-hole" is blocked; "a hole" is two words
    "blood orange in a bath",
    "a bloody bathrobe",
    "4k wallpaper",
    "100% cotton",
    "a $5 coffee",
    "version 1.1 release",
    "14889 stars",
    "a 3 d render of a chair",
    "ποτάμι με βάρκα",  # Greek: a river with a boat
    "красивый закат над морем",  # Russian: a beautiful sunset over the sea
    "美しい夕日",  # Japanese: a beautiful sunset
]


@pytest.mark.parametrize(("prompt", "term"), REFUSED)
def test_obfuscated_prompt_is_refused(prompt: str, term: str) -> None:
    found = find_all_blocked(prompt, BLOCKED)
    assert BlockedTerm(term) in found, f"{prompt!r} should be refused for {term!r}, got {found}"
    assert find_blocked(prompt, BLOCKED) is not None


@pytest.mark.parametrize("prompt", INNOCENT)
def test_innocent_prompt_is_not_refused(prompt: str) -> None:
    assert find_all_blocked(prompt, BLOCKED) == []
    assert find_blocked(prompt, BLOCKED) is None


def test_tables_are_large_enough_to_mean_something() -> None:
    assert len(REFUSED) >= 40
    assert len(INNOCENT) >= 40


@pytest.mark.parametrize(
    ("prompt", "word_mode_refuses"),
    [
        ("pornhub", False),
        ("xxpornxx", False),
        ("p0rnhub", False),
        ("p o r n hub", True),  # spelled out, the letters form a word of their own
        ("porn", True),
    ],
)
def test_substring_mode_matches_inside_words(prompt: str, word_mode_refuses: bool) -> None:
    assert find_blocked(prompt, [BlockedTerm("porn", "substring")]) == BlockedTerm(
        "porn", "substring"
    )
    assert (find_blocked(prompt, [BlockedTerm("porn")]) is not None) == word_mode_refuses


def test_substring_mode_never_joins_ordinary_words() -> None:
    substring_ass = [BlockedTerm("ass", "substring")]
    assert find_blocked("class", substring_ass) is not None
    assert find_blocked("i was sad", substring_ass) is None
    assert find_blocked("was s fine", substring_ass) is None


def test_multi_word_term_needs_its_words_together() -> None:
    terms = [BlockedTerm("blood bath")]
    assert find_blocked("a blood bath in the arena", terms) == terms[0]
    assert find_blocked("blood and a bath", terms) is None
    assert find_blocked("bath blood", terms) is None


def test_plural_of_the_last_word_counts() -> None:
    terms = [BlockedTerm("blood bath")]
    assert find_blocked("bloodbaths of war", terms) == terms[0]
    assert find_blocked("bloodbathing", terms) is None


def test_a_letter_written_twice_is_not_read_as_one() -> None:
    god = [BlockedTerm("god")]
    assert find_blocked("good morning", god) is None
    assert find_blocked("gooood morning", god) == god[0]
    assert find_blocked("GOD", god) == god[0]


def test_term_doubles_match_longer_runs() -> None:
    assert find_blocked("asss", [BlockedTerm("ass")]) is not None
    assert find_blocked("as", [BlockedTerm("ass")]) is None


def test_digit_only_term_matches_digit_for_digit() -> None:
    assert find_blocked("1488", [BlockedTerm("1488")]) is not None
    assert find_blocked("iabb", [BlockedTerm("1488")]) is None
    assert find_blocked("a bb gun", [BlockedTerm("88")]) is None
    assert find_blocked("88 keys", [BlockedTerm("88")]) is not None


def test_stand_in_written_in_the_term_means_its_letters() -> None:
    for prompt in ["shit", "sh1t", "sh!t", "sh|t"]:
        assert find_blocked(prompt, [BlockedTerm("sh1t")]) is not None, prompt
    assert find_blocked("ass", [BlockedTerm("@ss")]) is not None


def test_term_written_with_tricks_matches_plain_prompt() -> None:
    # A moderator may paste the disguised spelling they saw; it blocks the plain word too.
    disguised = [BlockedTerm("Ｎ.ѕ.F.W")]
    assert find_blocked("nsfw", disguised) == disguised[0]
    assert find_blocked("nsfwish", disguised) is None


def test_scripts_without_spaces_match_inside_text() -> None:
    terms = [BlockedTerm("色情")]
    assert find_blocked("这是色情图片", terms) == terms[0]
    assert find_blocked("美しい夕日", terms) is None


def test_find_returns_the_earliest_term_in_the_prompt() -> None:
    terms = [BlockedTerm("porn"), BlockedTerm("nsfw")]
    assert find_blocked("nsfw and porn", terms) == BlockedTerm("nsfw")
    assert find_all_blocked("nsfw and porn", terms) == terms


def test_empty_term_list_blocks_nothing() -> None:
    assert find_blocked("anything at all", []) is None
    assert find_all_blocked("anything at all", []) == []


def test_raw_and_normalized_term_match_the_same_prompts() -> None:
    raw = BlockedTerm("N.S.F.W")
    stored = BlockedTerm(normalize_term("N.S.F.W"))
    for prompt in ["nsfw", "n s f w", "ns-fw", "nsfwx"]:
        assert (find_blocked(prompt, [raw]) is None) == (find_blocked(prompt, [stored]) is None)


def test_compiled_matcher_is_reused_for_the_same_list() -> None:
    terms = [BlockedTerm("porn"), BlockedTerm("nsfw", "substring")]
    assert compile_terms(terms) is compile_terms(list(terms))
    assert compile_terms(terms) is not compile_terms(terms[:1])


@pytest.mark.parametrize(
    ("prompt", "terms", "mode", "expected"),
    [
        ("k" + "1" * 5000 + "x", ["kill", "lil", "illi"], "word", None),
        ("k" + "1" * 5000 + "x", ["lil", "illi", "kill"], "substring", "kill"),
        ("k1|" * 1000 + "x", ["killz"], "substring", None),
        ("1|" * 2000 + "x", ["lil"], "word", "lil"),  # "1|1" reads as l, i, l
        ("i" * 3000 + "l" * 3000 + "!", ["ill"], "word", "ill"),
        ("s$" * 2000 + "x", ["ass", "sass"], "substring", None),
    ],
)
def test_hostile_prompt_gets_the_right_answer(
    prompt: str, terms: list[str], mode: MatchMode, expected: str | None
) -> None:
    # Long runs of ambiguous look-alikes: answered, and answered correctly.
    found = find_blocked(prompt, [BlockedTerm(term, mode) for term in terms])
    assert (found.term if found else None) == expected


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("  NSFW ", "nsfw"),
        ("Ｎ.Ｓ.Ｆ.Ｗ", "nsfw"),
        ("Blood   Bath", "blood bath"),
        ("blood - bath", "blood bath"),
        ("n s f w", "nsfw"),
        ("a-hole", "ahole"),
        ("@ss", "@ss"),
        ("Ρorn", "porn"),  # Greek capital Ρ
        ("Crème Brûlée", "creme brulee"),
        ("STRASSE", "strasse"),
        ("Straße", "strasse"),
        ("sh\u200bit", "shit"),
        ("1488", "1488"),
    ],
)
def test_normalize_term(raw: str, normalized: str) -> None:
    assert normalize_term(raw) == normalized
    assert normalize_term(normalized) == normalized  # stable when applied to its own output


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("", "empty"),
        ("    ", "empty"),
        ("\u200b\u200b\ufeff", "empty"),
        ("...", "empty"),
        ("!!!", "letter or digit"),
        ("$ @", "letter or digit"),
        ("x" * (MAX_TERM_LENGTH + 1), f"at most {MAX_TERM_LENGTH}"),
        ("\ufdfa" * 7, "grows to"),  # 7 characters that each spell out to 18
    ],
)
def test_normalize_term_rejects_unusable_terms(raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        normalize_term(raw)


def test_normalize_term_accepts_the_longest_allowed_term() -> None:
    assert normalize_term("x" * MAX_TERM_LENGTH) == "x" * MAX_TERM_LENGTH


def test_normalize_term_rejects_non_text() -> None:
    with pytest.raises(TypeError, match="must be text"):
        normalize_term(None)  # type: ignore[arg-type]


def test_blocked_term_checks_its_mode_and_text() -> None:
    with pytest.raises(ValueError, match="'word'"):
        BlockedTerm("porn", "regex")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        BlockedTerm("   ")
    assert BlockedTerm("N.S.F.W").normalized == "nsfw"
