"""Text from documents is data: escape what a terminal would act on before printing it."""

from __future__ import annotations

import re

# C0 and C1 control characters except tab and newline, DEL, and the bidirectional overrides that reorder text
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def safe(text: str) -> str:
    """`text` with control characters shown as escapes (`\\x1b`, `\\u202e`): no escape sequence from a PDF
    reaches the terminal. Tabs and newlines are kept."""
    return _UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
