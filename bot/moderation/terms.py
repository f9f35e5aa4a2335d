"""Blocked terms: does a prompt contain one of a guild's blocked words or phrases?

How a prompt is matched against a term (the rules moderators rely on):

* **Same alphabet.** Prompt and term are both folded (``normalize.fold_text``): letter case,
  accents, fullwidth and other compatibility forms, look-alike letters from other scripts,
  zero-width and other invisible characters make no difference. A prompt that bidirectional
  controls or right-to-left letters draw in another order is matched in both orders.
* **Stand-ins.** Where the term has a letter, the prompt may have a digit or symbol that looks
  like it: 0 o, 1 i or l, 3 e, 4 a, 5 s, 6 b or g, 7 t, 8 b, 9 g, @ a, $ s, ! i, | i or l,
  + t (and ¡ i, ¢ c, € e, which are simply read as those letters). Each letter of the term
  accepts its own set of stand-ins, so an ambiguous "1" is tried as i and as l: "k111" is
  "kill". A term word that has no letters at all ("1488") is matched digit for digit.
* **Punctuation inside a word is skipped**: "n.s.f.w", "n-s-f-w", "n_s_f_w", "ns*fw", emoji
  between letters.
* **Spaces are skipped only in spelled-out words**: two or more single characters in a row
  ("n s f w", "n. s. f. w.") are read as one spelled-out word, and any stretch of it counts as a
  word ("draw a n s f w cat" matches nsfw). A space next to a longer piece is a real word break:
  "was s fine" never becomes "wassfine", and "a hole" is not "ahole".
* **Stretched letters**: a letter written three or more times counts as the letter ("nsssfw",
  "asssss"). A letter written exactly twice does not stand for a single letter, because real
  words double letters all the time (blocking "god" must not refuse "good", nor "anal"
  "annals"); it still matches where the term itself has a double letter ("ass" in "asss").
* **Whole words** (mode ``"word"``, the default): the match must not be glued to other letters or
  digits, so blocking "ass" does not refuse "class", "assistant", "bass" or "passage", while
  "a s s", "a.s.s", "@$$" and "ass!" are refused. The plain plural counts as the word: blocking
  "boob" also refuses "boobs" and blocking "ass" refuses "asses". For terms in scripts written
  without spaces (Chinese, Japanese, Thai, Lao, Khmer, Burmese) the word edges are not required.
* **Phrases**: the words of a multi-word term may be separated in the prompt by any whitespace or
  punctuation, or by nothing: "blood bath" matches "bloodbath", "blood-bath", "Blood_Bath".
* **Substring** (mode ``"substring"``, opt-in by a moderator): same rules without the whole-word
  edges, so "porn" also refuses "pornhub" and "xxpornxx". Spaces are still skipped only inside
  spelled-out words, so a term never matches across ordinary word breaks ("was sad" is not "ass").

What is not seen through: letters split by a space into pieces longer than one character
("ns fw"), a letter written twice ("nssfw"), stand-ins used as filler between letters ("n!s!f!w"),
and spellings that change letters ("phuk").
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from bot.moderation.confusables import STAND_IN_SYMBOLS, STAND_INS, stand_ins_for
from bot.moderation.normalize import GAP_CHAR, matching_forms, normalize_term

MatchMode = Literal["word", "substring"]
MATCH_MODES: tuple[str, ...] = get_args(MatchMode)

# A stretched letter may run this many characters past its count in the term ("nsssfw" is 2
# past). Same-character runs are already shortened to three in the prompt; the bound only limits
# mixed stand-in runs ("s$s$s$s$") and keeps ambiguous look-alikes ("1" for i or l) from making
# the regex engine try a number of splits that grows with the prompt.
_MAX_EXTRA_REPEATS = 8

# Scripts written without spaces between words: word edges mean nothing there.
_NO_SPACE_SCRIPT_RANGES = (
    (0x0E00, 0x0EFF),  # Thai, Lao
    (0x1000, 0x109F),  # Myanmar
    (0x1780, 0x17FF),  # Khmer
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0x20000, 0x3FFFF),  # CJK extensions B and later
)

# Prepared prompts hold no underscore, so \w is exactly "letter or digit" here. The start check
# comes right after the first character of a term (the character two back is the one before the
# match): a pattern that opens with a plain character class lets the regex engine skip quickly
# to the places where that character occurs.
_FIRST_NOT_AFTER_WORD_CHAR = r"(?<!\w.)"
_NOT_BEFORE_WORD_CHAR = r"(?!\w)"
_GAP = GAP_CHAR + "*+"  # possessive: a gap never competes with a letter for a character
_WORD_SEPARATOR = "[^\\w" + re.escape("".join(sorted(STAND_IN_SYMBOLS))) + "]*+"  # spaces or gaps


@dataclass(frozen=True)
class BlockedTerm:
    """A word or phrase a guild blocks, and how it is matched (see the module doc).

    ``term`` may be the raw text a moderator typed or its ``normalize_term`` form; both match the
    same prompts. Creating a BlockedTerm checks the term and raises ``ValueError`` with a message
    for the moderator when it cannot be blocked (empty, symbols only, too long) or when ``mode``
    is not ``"word"`` or ``"substring"``.
    """

    term: str
    mode: MatchMode = "word"

    def __post_init__(self) -> None:
        if self.mode not in MATCH_MODES:
            raise ValueError(
                f"unknown match mode {self.mode!r}; use 'word' (whole words, the default) or "
                "'substring' (anywhere, also inside longer words)"
            )
        normalize_term(self.term)

    @property
    def normalized(self) -> str:
        """The canonical form stored beside the raw term (``normalize_term(term)``)."""
        return normalize_term(self.term)


def _is_no_space_script(ch: str) -> bool:
    code = ord(ch)
    return any(low <= code <= high for low, high in _NO_SPACE_SCRIPT_RANGES)


def _accepted_chars(ch: str, word_has_letters: bool) -> frozenset[str]:
    """Every prompt character that may stand where the term has ``ch``."""
    if ch.isalpha():
        return frozenset({ch}) | stand_ins_for(ch)
    if word_has_letters and ch in STAND_INS:
        # A stand-in written in the term ("sh1t", "@ss") means the letters it stands for.
        accepted = {ch}
        for letter in STAND_INS[ch]:
            accepted |= {letter} | stand_ins_for(letter)
        return frozenset(accepted)
    return frozenset({ch})


def _char_class(chars: frozenset[str]) -> str:
    return "[" + "".join(re.escape(ch) for ch in sorted(chars)) + "]"


@dataclass(frozen=True)
class _Run:
    """``count`` copies of one term character; ``accepted`` is what the prompt may show."""

    accepted: frozenset[str]
    count: int
    stretchable: bool


def _word_runs(word: str) -> list[_Run]:
    has_letters = any(ch.isalpha() for ch in word)
    runs = []
    for ch, group in itertools.groupby(word):
        count = len(list(group))
        if has_letters:
            # The prompt's same-letter runs are cut to three, so the term's are too.
            runs.append(_Run(_accepted_chars(ch, True), min(count, 3), True))
        else:
            runs.append(_Run(_accepted_chars(ch, False), count, False))
    return runs


def _run_pattern(run: _Run, next_accepted: frozenset[str], start_check: str = "") -> str:
    """Regex for one run; ``start_check`` is inserted right after its first character."""
    one = _char_class(run.accepted)
    more = f"(?:{_GAP}{one})"
    if not run.stretchable:
        rest = f"{more}{{{run.count - 1}}}" if run.count > 1 else ""
    elif run.count == 1:
        # Exactly once, or stretched to three or more; never twice (see the module doc).
        rest = f"(?:{more}{{2,{2 + _MAX_EXTRA_REPEATS}}})?"
    else:
        rest = f"{more}{{{run.count - 1},{run.count - 1 + _MAX_EXTRA_REPEATS}}}"
    if rest and run.accepted.isdisjoint(next_accepted):
        # Nothing that follows can use a character this run gives back, so forbid the engine
        # from trying: this keeps matching linear in the prompt length.
        rest = f"(?>{rest})"
    return one + start_check + rest


def term_pattern(term: BlockedTerm) -> str:
    """The regular expression (over ``normalize.prepare_for_matching`` output) that finds
    ``term``."""
    words = normalize_term(term.term).split(" ")
    word_runs = [_word_runs(word) for word in words]
    plural_suffix = ""
    plural_accepts: frozenset[str] = frozenset()
    last_word = words[-1]
    if term.mode == "word" and any(ch.isalpha() for ch in last_word):
        e_class = _char_class(_accepted_chars("e", True))
        s_class = _char_class(_accepted_chars("s", True))
        plural_suffix = f"(?:(?:{_GAP}{e_class})?{_GAP}{s_class})?"
        plural_accepts = _accepted_chars("e", True) | _accepted_chars("s", True)

    flat_runs = [run for runs in word_runs for run in runs]
    parts: list[str] = []
    index = 0
    for word_index, runs in enumerate(word_runs):
        if word_index:
            parts.append(_WORD_SEPARATOR)
        for run_index, run in enumerate(runs):
            if run_index:
                parts.append(_GAP)
            following = (
                flat_runs[index + 1].accepted if index + 1 < len(flat_runs) else plural_accepts
            )
            start_check = ""
            if index == 0 and term.mode == "word" and not _is_no_space_script(words[0][0]):
                start_check = _FIRST_NOT_AFTER_WORD_CHAR
            parts.append(_run_pattern(run, following, start_check))
            index += 1
    parts.append(plural_suffix)
    body = "".join(parts)

    if term.mode == "substring" or _is_no_space_script(last_word[-1]):
        return body
    return body + _NOT_BEFORE_WORD_CHAR


@functools.lru_cache(maxsize=4096)
def _compiled_pattern(term: BlockedTerm) -> re.Pattern[str]:
    # Cached per term as well as per list, so adding one term to a long list compiles one term.
    return re.compile(term_pattern(term))


class TermMatcher:
    """Compiled patterns for one list of blocked terms. Build it with ``compile_terms``."""

    def __init__(self, terms: Sequence[BlockedTerm]) -> None:
        self.terms: tuple[BlockedTerm, ...] = tuple(terms)
        # One pattern per term rather than one big alternation: each opens with a character
        # class, which the regex engine scans for quickly, while an alternation of hundreds of
        # patterns is tried branch by branch at every position (about six times slower).
        self._patterns = [_compiled_pattern(term) for term in self.terms]

    def find(self, prompt: str) -> BlockedTerm | None:
        """The blocked term that occurs earliest in ``prompt`` (list order breaks ties), or
        ``None`` when the prompt contains none of them."""
        best: BlockedTerm | None = None
        for prepared in matching_forms(prompt):
            best_start = len(prepared) + 1
            for term, pattern in zip(self.terms, self._patterns, strict=True):
                match = pattern.search(prepared)
                if match is not None and match.start() < best_start:
                    best, best_start = term, match.start()
            if best is not None:
                return best
        return best

    def find_all(self, prompt: str) -> list[BlockedTerm]:
        """Every blocked term that occurs in ``prompt``, in the order of the term list."""
        forms = matching_forms(prompt)
        return [
            term
            for term, pattern in zip(self.terms, self._patterns, strict=True)
            if any(pattern.search(prepared) for prepared in forms)
        ]


@functools.lru_cache(maxsize=256)
def _compile_cached(terms: tuple[BlockedTerm, ...]) -> TermMatcher:
    return TermMatcher(terms)


def compile_terms(terms: Iterable[BlockedTerm]) -> TermMatcher:
    """A matcher for ``terms``, compiled once and reused for the same list (an LRU cache keyed by
    the terms and their modes, so an edited list simply compiles anew)."""
    return _compile_cached(tuple(terms))


def find_blocked(prompt: str, terms: Iterable[BlockedTerm]) -> BlockedTerm | None:
    """The first blocked term in ``prompt`` (earliest position), or ``None``. See the module
    doc for the matching rules."""
    return compile_terms(terms).find(prompt)


def find_all_blocked(prompt: str, terms: Iterable[BlockedTerm]) -> list[BlockedTerm]:
    """Every blocked term in ``prompt``, in list order (for the moderators' log)."""
    return compile_terms(terms).find_all(prompt)
