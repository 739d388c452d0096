"""Ranking and paging shared by the agent's searches (archival memory, recall storage, its own notes).

A search's ranking is fixed the first time a query is asked in a question (`Ranking`), and its page
size is fixed for the whole question (`per_page_for`), so page N always means the same results and
paging through every page shows each ranked result exactly once. `fit_page` lays a page out within the
tokens a function result may take: every entry whole when they fit, otherwise the longest ones cut to
one common length, never an entry dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from pipeline.agent.tokens import TokenCounter

PAGE_SIZE = 5  # the most results a page holds unless the caller says otherwise

T = TypeVar("T")


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


def normalize_query(query: str) -> str:
    """The form under which two searches count as the same: case and spacing ignored."""
    return " ".join(query.lower().split())


def page_count(total: int, per_page: int) -> int:
    return max(1, -(-total // per_page))


def page_window(total: int, page: int, per_page: int = PAGE_SIZE, *, exact: bool = True) -> str:
    """`Results 6-10 of 37 (page=1 of pages 0-7, 5 a page)`; `page` is 0-based, as the model sends it.

    Not `exact` (the count stopped at a limit): `Results 1-5 of at least 250 (page=0 of pages 0-49 or more, ...)`.
    """
    pages = page_count(total, per_page)
    first = page * per_page + 1
    last = min(total, first + per_page - 1)
    span = "page 0 only" if pages == 1 else f"pages 0-{pages - 1}"
    more = ("", "") if exact else ("at least ", " or more")
    return f"Results {first}-{last} of {more[0]}{total} (page={page} of {span}{more[1]}, {per_page} a page)"


@dataclass
class Ranking(Generic[T]):
    """One query's ranked results as first seen, the pages of it already shown, and the true total."""

    items: list[T]
    total: int
    shown: set[int] = field(default_factory=set)
    exact: bool = True  # False: `total` is a lower bound (the count stopped at a limit)

    def page(self, page: int, per_page: int) -> list[T]:
        return self.items[page * per_page:(page + 1) * per_page]

    def next_unseen(self, after: int, per_page: int) -> int | None:
        """The first page after `after` not shown yet, else the first unseen one; None once all were shown."""
        pages = page_count(self.total, per_page)
        order = [*range(after + 1, pages), *range(0, min(after + 1, pages))]
        return next((p for p in order if p not in self.shown), None)


def per_page_for(room: int, costs: list[int], *, preferred: int) -> int:
    """Results a page may hold: as many as fit whole in `room` tokens at the largest cost in `costs`."""
    largest = max(costs, default=1)
    return max(1, min(preferred, room // max(1, largest)))


def fit_page(head: str, entries: list[tuple[str, str]], tail: str, room: int, counter: TokenCounter) -> str:
    """`head`, then each (label, text) entry, then `tail`, within `room` tokens.

    Entries that fit are whole; otherwise the texts above a common cap are cut to it (saying so), so
    every entry keeps its label and the start of its text.
    """
    def join(texts: list[str]) -> str:
        body = [f"{label}\n{text}" for (label, _), text in zip(entries, texts)]
        return "\n\n".join(part for part in [head, *body, tail] if part)

    texts = [text for _, text in entries]
    whole = join(texts)
    if counter.text(whole) <= room or not entries:
        return whole
    frame = counter.text(join([""] * len(entries)))
    sizes = [counter.text(t) for t in texts]
    budget = max(0, room - frame - 4 * len(entries))  # 4: joins and rounding in each cut
    low, high = 0, max(sizes)
    while low < high:  # the largest common cap whose cut texts fit the budget
        mid = (low + high + 1) // 2
        if sum(min(s, mid) for s in sizes) <= budget:
            low = mid
        else:
            high = mid - 1
    while True:  # estimates are not quite additive: step the cap down until the whole page fits
        page = join([t if s <= low else cut_text(t, low, counter) for t, s in zip(texts, sizes)])
        if low == 0 or counter.text(page) <= room:
            return page
        low -= max(1, low // 16)


def cut_text(text: str, max_tokens: int, counter: TokenCounter) -> str:
    """The longest head of `text` that fits `max_tokens` with a note of how much was left out."""
    low, high = 0, len(text)
    while low < high:
        mid = (low + high + 1) // 2
        note = f" [... {len(text) - mid} more characters not shown]"
        if counter.text(text[:mid] + note) <= max_tokens:
            low = mid
        else:
            high = mid - 1
    return text[:low] + f" [... {len(text) - low} more characters not shown]"
