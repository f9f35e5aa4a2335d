"""Text folding shared by blocked terms and prompts.

Everything here is applied identically to a moderator's term and to a user's prompt, so the two
meet in the same alphabet. What folding does, in order:

1. Invisible characters are deleted: Unicode format characters (zero-width space, zero-width
   joiner and non-joiner, word joiner, soft hyphen, byte-order mark, bidirectional controls, tag
   characters), private-use and unassigned code points, control characters, Hangul fillers.
   Characters that render as blank space (the Braille blank) become a space.
2. Compatibility forms are unified (Unicode NFKD): fullwidth "ｎｓｆｗ", mathematical bold or
   script letters, circled letters, superscripts, ligatures such as "ﬁ".
3. Accents and other diacritics are removed (combining marks, including variation selectors).
4. Look-alike letters from other scripts (Cyrillic "а", Greek "ο", Cherokee "Ꭺ", small capitals,
   flag letters) become the Latin letter they look like: Unicode's confusables data (UTS #39)
   plus a few readings it lacks, see ``confusables.letter_fold_table``.
5. Letter case is folded (``str.casefold``, so "ß" matches "ss").
6. Runs of whitespace become one space.

Digits and symbols that stand in for letters ("0" for o, "$" for s) are kept as they are: the
term patterns accept them where a letter is expected (see ``terms.py``).

Bidirectional controls are a trick of their own: a right-to-left override (U+202E) makes Discord
draw "\u202enrop" as "porn". Folding deletes them, so matching also runs on the text in the order
it is drawn (``matching_forms``), and every prompt the bot shows goes through ``shown_text``,
which deletes them, so what people see is what was matched.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from bidi import get_display

from bot.moderation.confusables import (
    BLANK_SYMBOLS,
    INVISIBLE_LETTERS,
    STAND_IN_SYMBOLS,
    letter_fold_table,
)

MAX_TERM_LENGTH = 100
"""Longest blocked term accepted, in characters, before and after folding."""

SPELLING_JOINER = "\u00b7"
"""Put between the letters of a spelled-out word ("n s f w" -> "n·s·f·w"). It is punctuation, so
term patterns step over it like any other punctuation inside a word."""

BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
"""Arabic letter mark, LRM/RLM, the embeddings and overrides (LRE RLE PDF LRO RLO) and the
isolates (LRI RLI FSI PDI): invisible characters that change the order text is drawn in."""

# Joiners stay in shown text: they are invisible, cannot reorder anything, and emoji sequences
# ("👩‍💻") and Persian or Indic spelling need them.
_SHOWN_FORMAT_CHARS = frozenset("\u200c\u200d")

# Bidi classes of characters that can make a run of text draw right to left.
_RTL_BIDI_CLASSES = frozenset({"R", "AL", "RLE", "RLO", "LRE", "LRO", "RLI", "LRI", "FSI"})
_DROPPED_CATEGORIES = frozenset({"Cf", "Co", "Cs", "Cn"})
_MARK_CATEGORIES = frozenset({"Mn", "Me"})

_STAND_IN_SYMBOL_CLASS = "[" + re.escape("".join(sorted(STAND_IN_SYMBOLS))) + "]"

GAP_CHAR = r"[^\w\s" + re.escape("".join(sorted(STAND_IN_SYMBOLS))) + "]"
"""Regex for one character that may sit inside a word without breaking it: punctuation, emoji,
the spelling joiner (``prepare_for_matching`` turns underscores into hyphens). Stand-in
symbols are excluded (they are letters to a term), so a gap and a letter never compete for the
same character."""

# A letter or stand-in symbol repeated four or more times with only gap characters in between:
# "sssss", "s.s.s.s". Used to shorten stretched letters to three (see shorten_long_runs).
_LONG_RUN = re.compile(r"([^\W\d_]|" + _STAND_IN_SYMBOL_CLASS + r")(?:" + GAP_CHAR + r"*+\1){3,}")


def _drop_invisible(text: str) -> str:
    kept: list[str] = []
    for ch in text:
        if ch.isascii():
            # Fast path; ASCII control characters other than whitespace are still dropped.
            if ch.isprintable() or ch.isspace():
                kept.append(ch)
            continue
        if ch in INVISIBLE_LETTERS:
            continue
        if ch in BLANK_SYMBOLS or ch.isspace():
            kept.append(" ")
            continue
        category = unicodedata.category(ch)
        if category in _DROPPED_CATEGORIES or category == "Cc":
            continue
        kept.append(ch)
    return "".join(kept)


def _decompose_and_strip_marks(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    if decomposed.isascii():
        return decomposed
    return "".join(ch for ch in decomposed if unicodedata.category(ch) not in _MARK_CATEGORIES)


def fold_text(text: str) -> str:
    """Fold ``text`` to the lower-case Latin letters a reader would see (see the module doc).

    >>> fold_text("Ｎ\u200bＳＦＷ  Рörn")
    'nsfw porn'
    """
    text = _drop_invisible(text)
    text = _decompose_and_strip_marks(text)
    text = text.translate(letter_fold_table())
    text = text.casefold()
    # Case folding can produce new combining marks ("İ" -> "i" + dot above) and small letters
    # whose capitals the table does not list, so both steps run once more.
    text = _decompose_and_strip_marks(text)
    text = text.translate(letter_fold_table())
    return " ".join(text.split())


def shown_text(text: str) -> str:
    """``text`` as the bot may show it: bidirectional controls and other invisible format
    characters (zero-width spaces, tag characters, soft hyphens) removed, joiners kept.

    A prompt displayed after this reads in the order it was typed and matched, so a right-to-left
    override cannot draw a blocked word that the filter never saw.
    """
    if text.isascii():
        return text
    return "".join(
        ch
        for ch in text
        if ch in _SHOWN_FORMAT_CHARS
        or ch.isascii()
        or (ch not in BIDI_CONTROLS and unicodedata.category(ch) != "Cf")
    )


def _may_draw_reversed(text: str) -> bool:
    return not text.isascii() and any(
        unicodedata.bidirectional(ch) in _RTL_BIDI_CLASSES for ch in text if not ch.isascii()
    )


def drawn_order(text: str) -> str:
    """``text`` in the order its characters are drawn, left to right (the Unicode bidirectional
    algorithm, via python-bidi); the text itself when nothing in it draws right to left."""
    if not _may_draw_reversed(text):
        return text
    return get_display(text)


def is_word_char(ch: str) -> bool:
    """A letter, a digit, or a symbol that can stand for a letter ("@", "$", "!", "|", "+")."""
    return ch.isalnum() or ch in STAND_IN_SYMBOLS


def _word_char_count(token: str) -> int:
    return sum(1 for ch in token if is_word_char(ch))


def spelled_out_runs(tokens: Sequence[str]) -> list[tuple[int, int]]:
    """Index ranges ``[start, end)`` of spelled-out runs among whitespace-separated ``tokens``.

    A spelled-out run is two or more tokens of exactly one letter/digit/stand-in each ("n", "s.",
    "$"), possibly with punctuation-only tokens ("-", "...") between them. The range starts at the
    first single-character token and ends after the last one.
    """
    runs: list[tuple[int, int]] = []
    singles: list[int] = []
    for index, token in enumerate(tokens):
        count = _word_char_count(token)
        if count == 1:
            singles.append(index)
        elif count > 1:
            if len(singles) >= 2:
                runs.append((singles[0], singles[-1] + 1))
            singles = []
        # Punctuation-only tokens neither extend nor break a run.
    if len(singles) >= 2:
        runs.append((singles[0], singles[-1] + 1))
    return runs


def join_spelled_out(text: str) -> str:
    """Join the letters of spelled-out words in whitespace-normalised ``text``.

    "draw a n s f w cat" -> "draw a·n·s·f·w cat". Only spaces between single characters are
    joined; "was s fine" has one single character and stays as it is, so its words never fuse.
    """
    tokens = text.split(" ")
    runs = spelled_out_runs(tokens)
    if not runs:
        return text
    pieces: list[str] = []
    position = 0
    for start, end in runs:
        pieces.extend(tokens[position:start])
        pieces.append(SPELLING_JOINER.join(tokens[start:end]))
        position = end
    pieces.extend(tokens[position:])
    return " ".join(pieces)


def shorten_long_runs(text: str) -> str:
    """Shorten a letter or symbol repeated four or more times to three: "asssss" -> "asss".

    Terms treat three or more repeats of a letter as "this letter, stretched", so nothing is lost,
    and the shortening keeps the work the term patterns do bounded on hostile input. Digits are
    left alone because in numbers their count matters ("10000" is not "1000").
    """
    return _LONG_RUN.sub(lambda match: match.group(1) * 3, text)


def prepare_for_matching(text: str) -> str:
    """The form of a prompt that term patterns run on: folded, underscores read as hyphens (so
    "n_s_f_w" is punctuation inside a word, as it looks), spelled-out words joined, long letter
    runs shortened."""
    return shorten_long_runs(join_spelled_out(fold_text(text).replace("_", "-")))


def matching_forms(text: str) -> tuple[str, ...]:
    """Every form of a prompt that term patterns must run on: the prepared prompt, and the
    prepared prompt in drawn order when bidi controls or right-to-left letters reorder it (so
    "\u202enrop" is matched as the "porn" a reader sees)."""
    logical = prepare_for_matching(text)
    drawn = drawn_order(text)
    if drawn == text:
        return (logical,)
    visual = prepare_for_matching(drawn)
    return (logical,) if visual == logical else (logical, visual)


def normalize_term(term: str) -> str:
    """The canonical form of a blocked term: what the database stores beside the raw text.

    The term is folded like a prompt (see ``fold_text``); punctuation inside a word is dropped
    ("a-hole" -> "ahole", "n.s.f.w" -> "nsfw"); a spelled-out term ("n s f w") is joined into one
    word; words are separated by single spaces. Digits and stand-in symbols are kept: inside a
    word with letters ("sh1t", "@ss") they stand for the letters they look like; a word without
    letters ("1488") is matched digit for digit. Two raw terms with the same canonical form are
    the same block.

    Raises ``ValueError`` with a message a moderator can act on when the term is empty, holds no
    letter or digit, or is longer than ``MAX_TERM_LENGTH`` characters.
    """
    if not isinstance(term, str):
        raise TypeError(f"a blocked term must be text, not {type(term).__name__}")
    if len(term) > MAX_TERM_LENGTH:
        raise ValueError(
            f"a blocked term can be at most {MAX_TERM_LENGTH} characters long (this one has "
            f"{len(term)}); block a shorter word or phrase"
        )
    words = ["".join(ch for ch in word if is_word_char(ch)) for word in fold_text(term).split()]
    words = [word for word in words if word]
    if not words:
        raise ValueError(
            "a blocked term cannot be empty or invisible; type the word or phrase to block"
        )
    if not any(ch.isalnum() for word in words for ch in word):
        raise ValueError(
            "a blocked term needs at least one letter or digit; symbols alone cannot be blocked"
        )
    for start, end in reversed(spelled_out_runs(words)):
        words[start:end] = ["".join(words[start:end])]
    normalized = " ".join(words)
    if len(normalized) > MAX_TERM_LENGTH:
        raise ValueError(
            f"this term grows to {len(normalized)} characters once its special characters are "
            f"spelled out, more than the {MAX_TERM_LENGTH} allowed; block a shorter word or phrase"
        )
    return normalized
