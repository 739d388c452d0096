"""Ranking and paging helpers shared by the agent's searches (archival notes, recall storage)."""

from __future__ import annotations

import re

PAGE_SIZE = 5


def term_search(texts: list[str], query: str) -> list[int]:
    """Indices of `texts` containing any query term, best first (most distinct terms, then newest)."""
    terms = {t for t in re.findall(r"\w+", query.lower()) if len(t) > 1} or {query.lower().strip()}
    scored = []
    for index, text in enumerate(texts):
        lowered = text.lower()
        score = sum(1 for t in terms if t in lowered)
        if score:
            scored.append((-score, -index))
    return [-i for _, i in sorted(scored)]


def page_window(total: int, page: int, per_page: int = PAGE_SIZE) -> str:
    """`Showing results 6-10 of 37 (page 2 of 8)`; `page` is 0-based."""
    pages = max(1, -(-total // per_page))
    first = page * per_page + 1
    last = min(total, first + per_page - 1)
    return f"Showing results {first}-{last} of {total} (page {page + 1} of {pages})"
