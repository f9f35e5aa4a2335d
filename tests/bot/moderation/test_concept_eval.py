"""The concept-filter evaluation: measured with a deterministic bag-of-words embedder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bot.moderation import evaluate_concepts, load_eval_set, pick_threshold, sweep_thresholds
from bot.moderation.concept_eval import eval_set_from_dict

EVAL_FILE = Path(__file__).with_name("concept_eval.json")

# Cosines under a bag-of-words embedder, worked out by hand:
#   "red apple" vs "red apple pie" / "red apple dog": 2 / sqrt(2 * 3) = 0.816
#   "red apple" vs "green apple" / "red car": 1 / sqrt(2 * 2) = 0.5
#   "big dog" vs "big dog house": 0.816; vs "red apple dog": 0.408; vs "big cat": 0.5
#   everything else: 0
SMALL_SET = {
    "concepts": [
        {"concept": "red apple", "should_refuse": ["red apple pie", "green apple", "blue sky"]},
        {"concept": "big dog", "should_refuse": ["big dog house", "small cat", "red apple dog"]},
    ],
    "innocent": ["red car", "big cat", "yellow banana", "small house"],
}


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


class BagOfWords:
    """Embeds a text as word counts over a fixed vocabulary; counts how often it is called."""

    def __init__(self, texts: list[str]) -> None:
        self.vocabulary = sorted({word for text in texts for word in _words(text)})
        self.calls = 0

    def __call__(self, texts: list[str]) -> list[list[float]]:
        self.calls += 1
        vectors = []
        for text in texts:
            vector = [0.0] * len(self.vocabulary)
            for word in _words(text):
                vector[self.vocabulary.index(word)] += 1.0
            vectors.append(vector)
        return vectors


def _all_texts(data: dict) -> list[str]:
    texts = list(data["innocent"])
    for concept in data["concepts"]:
        texts.append(concept["concept"])
        texts.extend(concept["should_refuse"])
    return texts


def test_report_counts_catches_and_false_refusals() -> None:
    report = evaluate_concepts(BagOfWords(_all_texts(SMALL_SET)), SMALL_SET, threshold=0.45)

    assert (report.caught, report.paraphrases) == (4, 6)
    assert report.catch_rate == pytest.approx(4 / 6)
    assert (report.false_refusals, report.innocent) == (2, 4)
    assert report.false_refusal_rate == pytest.approx(0.5)
    assert set(report.missed) == {"blue sky", "small cat"}
    assert {(prompt, concept) for prompt, concept, _ in report.refused_innocent} == {
        ("red car", "red apple"),
        ("big cat", "big dog"),
    }

    apple, dog = report.per_concept
    assert (apple.concept, apple.caught, apple.caught_as_this, apple.false_refusals) == (
        "red apple",
        2,
        2,
        1,
    )
    # "red apple dog" is refused, but for being an apple, not a dog.
    assert (dog.concept, dog.caught, dog.caught_as_this, dog.false_refusals) == ("big dog", 2, 1, 1)
    assert dog.catch_rate == pytest.approx(2 / 3)


def test_higher_threshold_refuses_less() -> None:
    report = evaluate_concepts(BagOfWords(_all_texts(SMALL_SET)), SMALL_SET, threshold=0.6)
    assert report.catch_rate == pytest.approx(0.5)
    assert report.false_refusal_rate == 0.0
    assert report.refused_innocent == ()


def test_sweep_embeds_once_and_reports_each_threshold() -> None:
    embedder = BagOfWords(_all_texts(SMALL_SET))
    reports = sweep_thresholds(embedder, SMALL_SET, [0.3, 0.45, 0.6, 0.9])

    assert embedder.calls == 1
    assert [r.threshold for r in reports] == [0.3, 0.45, 0.6, 0.9]
    assert [r.caught for r in reports] == [4, 4, 3, 0]
    assert [r.false_refusals for r in reports] == [2, 2, 0, 0]


def test_pick_threshold_balances_catches_against_false_refusals() -> None:
    reports = sweep_thresholds(BagOfWords(_all_texts(SMALL_SET)), SMALL_SET, [0.3, 0.45, 0.6, 0.9])
    assert pick_threshold(reports, max_false_refusal_rate=0.0).threshold == 0.6
    # 0.3 and 0.45 catch as much; the more lenient threshold wins the tie.
    assert pick_threshold(reports, max_false_refusal_rate=0.5).threshold == 0.45
    assert pick_threshold(reports[:2], max_false_refusal_rate=0.25) is None


def test_an_embedder_that_sees_no_difference_refuses_everything() -> None:
    def constant(texts: list[str]) -> list[list[float]]:
        return [[1.0, 2.0, 3.0] for _ in texts]

    report = evaluate_concepts(constant, load_eval_set(EVAL_FILE), threshold=0.99)
    assert report.catch_rate == 1.0
    assert report.false_refusal_rate == 1.0


def test_embedder_returning_the_wrong_count_is_reported() -> None:
    with pytest.raises(ValueError, match="returned 1 vectors"):
        evaluate_concepts(lambda texts: [[1.0]], SMALL_SET, threshold=0.5)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"innocent": ["a cat"]}, "'concepts' list"),
        ({"concepts": [{"should_refuse": ["x"]}], "innocent": ["a"]}, "'concept' string"),
        ({"concepts": [{"concept": "x", "should_refuse": []}], "innocent": ["a"]}, "should_refuse"),
        ({"concepts": [{"concept": "x", "should_refuse": ["y"]}], "innocent": "a"}, "'innocent'"),
    ],
)
def test_malformed_evaluation_set_is_refused(data: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        eval_set_from_dict(data)


# The labelled list itself: large enough, and fair to the filter.


def test_labelled_list_has_enough_prompts() -> None:
    data = load_eval_set(EVAL_FILE)
    assert len(data.concepts) >= 3
    assert all(len(concept.should_refuse) >= 10 for concept in data.concepts)
    assert len(data.innocent) >= 30


def test_paraphrases_avoid_the_concept_words() -> None:
    # Otherwise a word list would catch them and the measurement would flatter the filter.
    for concept in load_eval_set(EVAL_FILE).concepts:
        banned = [word for word in _words(concept.text) if len(word) > 3]
        banned += list(concept.avoid_words)
        for prompt in concept.should_refuse:
            clashes = [w for w in _words(prompt) for b in banned if w.startswith(b)]
            assert not clashes, f"{prompt!r} uses {clashes} of concept {concept.text!r}"


def test_no_prompt_is_labelled_twice() -> None:
    data = load_eval_set(EVAL_FILE)
    prompts = [p for concept in data.concepts for p in concept.should_refuse] + list(data.innocent)
    assert len(prompts) == len(set(prompts))
