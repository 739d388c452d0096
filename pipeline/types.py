"""Plain data shared between stages: search hits, citations, agent steps and answers."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

LOW_OCR_CONFIDENCE = 0.85  # text read by OCR with a lower mean recognition score is kept, but marked as shaky


def low_ocr_confidence(confidence: float | None) -> bool:
    """Whether OCR'd text of this confidence may hold misread characters (None: not OCR'd)."""
    return confidence is not None and confidence < LOW_OCR_CONFIDENCE


@dataclass(frozen=True)
class Hit:
    """One chunk of archival memory returned by a search."""

    chunk_id: str
    source: str  # path of the file, relative to the ingested directory
    page: int | None  # 1-based first page (None for formats without pages)
    page_end: int | None
    heading: str
    text: str
    score: float
    ocr: bool = False  # the text was read from a picture of the page, not from its text layer
    ocr_confidence: float | None = None  # the page's mean OCR recognition score (0-1); None without OCR

    @property
    def low_confidence(self) -> bool:
        return low_ocr_confidence(self.ocr_confidence)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"low_confidence": self.low_confidence}


@dataclass(frozen=True)
class SearchResult:
    """One page of ranked hits, with the true number of matches behind it."""

    query: str
    hits: list[Hit]
    total: int  # matches in the whole archive, not just on this page
    page: int  # 0-based
    top_k: int  # hits per page
    total_exact: bool = True  # False: the count stopped at a limit, and `total` is a lower bound

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.top_k)) if self.top_k else 1

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.query, "total": self.total, "total_exact": self.total_exact, "page": self.page,
                "top_k": self.top_k, "hits": [h.to_dict() for h in self.hits]}


@dataclass(frozen=True)
class Citation:
    """A chunk an answer rests on; `inferred` when the model cited nothing and the grounding check found it."""

    source: str
    page: int | None
    chunk_id: str
    inferred: bool = False
    ocr: bool = False
    ocr_confidence: float | None = None

    @classmethod
    def of(cls, hit: Hit, *, inferred: bool = False) -> "Citation":
        return cls(hit.source, hit.page, hit.chunk_id, inferred, hit.ocr, hit.ocr_confidence)

    @property
    def low_confidence(self) -> bool:
        return low_ocr_confidence(self.ocr_confidence)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self) | {"low_confidence": self.low_confidence}
        if not self.inferred:
            del d["inferred"]  # cited by the model: the plain form
        return d


@dataclass
class Step:
    """One function call the agent made, as recorded in the answer's trace."""

    function: str
    arguments: dict[str, Any]
    result: str  # short summary of what the function returned
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Answer:
    """The outcome of one question. `status` is "ok" or "error" (then `error` says why).

    `grounded`: every checkable claim of the answer was found in the chunks retrieved (None: no answer);
    `unsupported`: the claims that were not verified; `mismatched`: those of them found in the retrieved text but
    not answering the question, each with why (a weight asked, a pressure given); `withheld`: the ungrounded
    answer that --strict replaced.
    """

    question: str
    answer: str
    citations: list[Citation] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=lambda: {"prompt_tokens": 0, "completion_tokens": 0})
    status: str = "ok"
    error: str | None = None
    grounded: bool | None = None
    unsupported: list[str] = field(default_factory=list)
    mismatched: dict[str, str] = field(default_factory=dict)
    withheld: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"question": self.question, "answer": self.answer,
                "citations": [c.to_dict() for c in self.citations],
                "steps": [s.to_dict() for s in self.steps], "usage": dict(self.usage),
                "status": self.status, "error": self.error, "grounded": self.grounded,
                "unsupported": list(self.unsupported), "mismatched": dict(self.mismatched), "withheld": self.withheld}
