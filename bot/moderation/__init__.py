"""Moderation logic: blocked terms and blocked concepts.

The matching modules (normalize, confusables, terms, concepts, concept_eval, permissions) are
pure: they import neither discord, torch nor the database, and take plain values. The glue that
reads guild settings and asks the GPU worker for embeddings (policy, image_check) imports the
database, and is imported explicitly rather than re-exported here. Term matching rules are documented in ``bot.moderation.terms``, concept checks in
``bot.moderation.concepts``, and the evaluation of the concept filter in
``bot.moderation.concept_eval``.
"""

from bot.moderation.concept_eval import (
    ConceptResult,
    EvalConcept,
    EvalReport,
    EvalSet,
    evaluate_concepts,
    load_eval_set,
    pick_threshold,
    sweep_thresholds,
)
from bot.moderation.concepts import (
    Concept,
    closest_concept,
    concept_hit,
    cosine_similarity,
    embedding_from_bytes,
    embedding_to_bytes,
)
from bot.moderation.normalize import MAX_TERM_LENGTH, fold_text, normalize_term
from bot.moderation.terms import (
    BlockedTerm,
    MatchMode,
    TermMatcher,
    compile_terms,
    find_all_blocked,
    find_blocked,
)

__all__ = [
    "MAX_TERM_LENGTH",
    "BlockedTerm",
    "Concept",
    "ConceptResult",
    "EvalConcept",
    "EvalReport",
    "EvalSet",
    "MatchMode",
    "TermMatcher",
    "closest_concept",
    "compile_terms",
    "concept_hit",
    "cosine_similarity",
    "embedding_from_bytes",
    "embedding_to_bytes",
    "evaluate_concepts",
    "find_all_blocked",
    "find_blocked",
    "fold_text",
    "load_eval_set",
    "normalize_term",
    "pick_threshold",
    "sweep_thresholds",
]
