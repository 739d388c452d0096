"""Answers a small model sends that are not answers yet, and the evidence that sends one back for a second look.

- `repeats_question(message, question)`: the message is the question again (its words and no others), or is
  itself a question. Measured with the 1.5B model: it found the answer, wrote it into `notes`, then sent the
  question as its message.
- `closest_sentence(question, hits)`: the sentence of the chunks shown that matches the question closely
  (most of its words, rarer words weighing more, every number and code of the question in its chunk), or None.
  It is shown to a model that says the documents do not answer while such a sentence was in front of it
  (measured: the answer ranked first, shown whole, and the model declined).
"""

from __future__ import annotations

import math
import re
from typing import Sequence

from pipeline.agent.grounding import normalize, stem
from pipeline.types import Hit

__all__ = ["CLOSE", "closest_sentence", "repeats_question", "terms"]

CLOSE = 0.6  # share of the question's (rarity-weighted) words a sentence must hold to count as close
QUOTE_CHARS = 300  # longest sentence quoted back to the model

_STOPWORDS = frozenset("""
what which when where does with that this from have there their about into they were been many much after before
should would could than then them your will shall must how who whom whose why within the and for are was did had
has can may might its our you any all some not nor but also per
""".split())
_YES_NO = re.compile(r"^\s*(?:is|are|was|were|do|does|did|can|could|will|would|should|shall|has|have|had|may|must)\b",
                     re.IGNORECASE)


def terms(text: str) -> set[str]:
    """The content words of `text`: numbers (`35.00`), codes (`E-117`) and words of 3 letters or more, casefolded,
    light suffixes dropped, stopwords out."""
    words = re.findall(r"\d+(?:[.,]\d+)*|[^\W_](?:[\w-]*[^\W_])?", normalize(text).casefold())
    return {w if w[0].isdigit() else stem(w) for w in words
            if w[0].isdigit() or (len(w) > 2 and w not in _STOPWORDS)}


def repeats_question(message: str, question: str) -> bool:
    """`message` is a question itself (every sentence ends in `?`), or says nothing the question does not (and
    at least half of what it does).

    For a yes/no question ("Is the Hydra-7 rated for 42 bar?") restating it is an answer, so there only a
    message that is itself a question counts.
    """
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", message.strip()) if s.strip()]
    if sentences and all(s.rstrip().endswith("?") for s in sentences):
        return True
    said, asked = terms(message), terms(question)
    return not _YES_NO.match(question) and len(said) >= max(1, len(asked) / 2) and said <= asked


def _sentences(text: str) -> list[str]:
    """Sentences and clauses (`;`) of `text`; a single line break (a PDF's line end) does not end one."""
    return [" ".join(s.split()) for s in re.split(r"(?<=[.;!?])\s+|\n\s*\n", text) if len(s.strip()) > 3]


def closest_sentence(question: str, hits: Sequence[Hit], *, close: float = CLOSE) -> tuple[Hit, str] | None:
    """(hit, sentence): the sentence of `hits` holding the largest share of the question's words, when that share
    is at least `close`; else None.

    A word counts by its rarity among `hits` (log(1 + n / (1 + chunks holding it))), so the words every
    chunk shares (the product name, the company) weigh little. A chunk (text, heading and source name) that
    lacks a number or code of the question (`E-204`, `2026`, `Hydra-5`) is about something else and is passed
    over: a near miss is never pushed on the model.
    """
    asked = terms(question)
    if len(asked) < 2 or not hits:
        return None
    chunk_terms = [terms(f"{hit.source.replace('_', ' ')}\n{hit.heading}\n{hit.text}") for hit in hits]
    weight = {t: math.log(1 + len(hits) / (1 + sum(t in c for c in chunk_terms))) for t in asked}
    total = sum(weight.values())
    codes = {t for t in asked if any(ch.isdigit() for ch in t)}
    best: tuple[float, Hit, str] | None = None
    for hit, held in zip(hits, chunk_terms):
        if not codes <= held:
            continue
        for sentence in _sentences(hit.text):
            share = sum(weight[t] for t in asked & terms(sentence)) / total
            if share >= close and (best is None or share > best[0]):
                best = (share, hit, sentence)
    if best is None:
        return None
    sentence = best[2] if len(best[2]) <= QUOTE_CHARS else best[2][:QUOTE_CHARS] + " [...]"
    return best[1], sentence
