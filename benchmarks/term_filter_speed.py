"""Speed of blocked-term matching: compiling a guild's list, and checking prompts against it.

    python benchmarks/term_filter_speed.py [--terms 500] [--repeats 200]

Prints the time to compile a list of random terms (cold, then warm from the per-term cache), the
time to check ordinary prompts against it, and the time for hostile prompts built to make
regular expressions backtrack. Numbers are from one run on this machine.
"""

from __future__ import annotations

import argparse
import random
import string
import time

from bot.moderation.terms import BlockedTerm, TermMatcher, compile_terms

ORDINARY = [
    "a lighthouse in a storm at night, oil painting by a famous artist, dramatic lighting, "
    "trending on artstation, highly detailed, 4k, cinematic composition with crashing waves",
    "a fox in a snowy forest, watercolor",
    "ｐｏｒｔｒａｉｔ of a кнight in shining armour, ᴅᴇᴛᴀɪʟᴇᴅ, 8 k, n.o.i.r s t y l e",
]
HOSTILE = {
    "'1|' x 1000": "1|" * 1000 + "x",
    "'1' x 2000": "k" + "1" * 2000 + "x",
    "'s$' x 1000": "s$" * 1000,
    "'l1i!|' x 400": "l1i!|" * 400 + "x",
    "spelled 'a b ' x 500": "a b " * 500,
}


def random_terms(count: int, seed: int) -> list[BlockedTerm]:
    rng = random.Random(seed)

    def word() -> str:
        return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 9)))

    terms = []
    for _ in range(count):
        text = word() if rng.random() < 0.85 else f"{word()} {word()}"
        terms.append(BlockedTerm(text, "word" if rng.random() < 0.9 else "substring"))
    # Terms whose neighbouring letters share look-alikes ("1" is i or l) are the costly kind.
    return terms + [BlockedTerm(t) for t in ("kill", "lil", "illi", "bigg")]


def per_call_ms(matcher: TermMatcher, prompt: str, repeats: int) -> float:
    started = time.perf_counter()
    for _ in range(repeats):
        matcher.find(prompt)
    return (time.perf_counter() - started) / repeats * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--terms", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()

    terms = random_terms(args.terms, seed=0)
    started = time.perf_counter()
    matcher = compile_terms(terms)
    cold = time.perf_counter() - started
    started = time.perf_counter()
    TermMatcher(list(reversed(terms)))  # a new list of already-seen terms
    warm = time.perf_counter() - started
    print(f"{len(terms)} terms: compile {cold * 1000:.0f} ms cold, {warm * 1000:.1f} ms warm")

    for prompt in ORDINARY:
        elapsed = per_call_ms(matcher, prompt, args.repeats)
        print(f"  {elapsed:7.3f} ms  {len(prompt):5} chars  ordinary")
    for name, prompt in HOSTILE.items():
        repeats = max(1, args.repeats // 20)
        print(f"  {per_call_ms(matcher, prompt, repeats):7.3f} ms  {len(prompt):5} chars  {name}")


if __name__ == "__main__":
    main()
