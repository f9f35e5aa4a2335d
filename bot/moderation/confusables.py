"""Tables of characters people use to disguise letters.

Two kinds, kept apart because they are matched differently:

* ``LETTER_FOLDS``: letters from other scripts, small capitals, letters with strokes, regional
  indicators... that look like one Latin letter. They are *replaced* by that letter before any
  matching, in prompts and in terms alike, because a reader sees that letter and nothing else.
  Unicode's compatibility decomposition (NFKD) already handles fullwidth forms, mathematical
  alphanumerics, circled letters and the like; this table covers what NFKD leaves alone.

* ``STAND_INS``: digits and symbols that stand for letters ("4" for a, "$" for s). They are *not*
  replaced, because one of them can stand for several letters ("1" is i or l) and because "!" or
  "+" in ordinary text is punctuation. Instead, the pattern built for a term lets each of its
  letters accept the characters that can stand for it (see ``terms.py``).

The tables were written for this project from the look of the glyphs; they cover the common
look-alikes, not every entry of Unicode's confusables list.
"""

from __future__ import annotations


def _pairs(sources: str, targets: str) -> dict[str, str]:
    if len(sources) != len(targets):
        raise ValueError("look-alike table rows must pair one source with one target character")
    return dict(zip(sources, targets, strict=True))


# Cyrillic. Upper and lower case are listed separately because some capitals look like a
# different Latin letter than their small forms do (Н is H; the small н is a small-cap H).
_CYRILLIC = _pairs(
    "АВЕЅІЈКМНОРСТУХҮҺԀԚԜӀЬ" + "авеѕіјкмнорстухүһԁԛԝӏьпг",
    "ABESIJKMHOPCTYXYHDQWlb" + "abesijkmhopctyxyhdqwlbnr",
)

# Greek. Capitals are folded before case folding, so Η (H) and η (n) end up different letters.
_GREEK = _pairs(
    "ΑΒΕΖΗΙΚΜΝΟΡΤΥΧϹ" + "αβγεηικμνορτυχωϲςπϳ",
    "ABEZHIKMNOPTYXC" + "abyenikuvoptuxwccnj",
)

# Armenian and Cherokee letters that are drawn like Latin ones.
_ARMENIAN = _pairs("օսհոզց", "ouhnqg")
_CHEROKEE = _pairs("ᎪᏴᏟᎬᎻᏔᎫᏦᏞᎷᏢᎢᏚᏙᏃ", "ABCEHWJKLMPTSVZ")

# Latin letters that NFKD does not decompose: small capitals, letters with a stroke or bar,
# dotless and script forms.
_LATIN_EXTRA = _pairs(
    "ᴀʙᴄᴅᴇꜰɢʜɪᴊᴋʟᴍɴᴏᴘʀꜱᴛᴜᴠᴡʏᴢ" + "øØđĐłŁħĦŧŦɨƀƶƒɍʉɏıȷĸɑɡɩ",
    "abcdefghijklmnoprstuvwyz" + "ooddllhhttibzfruyijkagi",
)

# Emoji letters: regional indicators (the halves of flag emoji) and the negative circled and
# negative squared capitals. NFKD leaves all three alone.
_EMOJI_LETTERS = {
    chr(start + offset): chr(ord("a") + offset)
    for start in (0x1F1E6, 0x1F150, 0x1F170)
    for offset in range(26)
}

# Ligatures that NFKD keeps as one letter.
_LIGATURES = {"æ": "ae", "Æ": "AE", "œ": "oe", "Œ": "OE"}

# Non-ASCII symbols that only ever stand for one letter are simply replaced by it. (Keeping every
# stand-in symbol ASCII also keeps the character classes in term patterns cheap to compile.)
_SYMBOL_LETTERS = {"¡": "i", "¢": "c", "€": "e"}

LETTER_FOLDS: dict[str, str] = {
    **_CYRILLIC,
    **_GREEK,
    **_ARMENIAN,
    **_CHEROKEE,
    **_LATIN_EXTRA,
    **_EMOJI_LETTERS,
    **_LIGATURES,
    **_SYMBOL_LETTERS,
}

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
