"""Secrets never leave: scrub configured secrets and key-shaped strings from text before it is shown or recorded.

Used on everything an endpoint says back (error bodies can echo the request, keys included) and on any
exception text that reaches a record. What is scrubbed: the values of `OPENAI_API_KEY`, the AWS credentials
and any other environment variable named like a secret (`*_KEY`, `*_SECRET`, `*_TOKEN`, `*_PASSWORD`), the
key given in `Settings`, and strings shaped like keys wherever they come from: `sk-...`, `Bearer ...`/`Basic ...`,
`Authorization: ...`, AWS access key ids, and `api_key=...`-style assignments.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

REDACTED = "[redacted]"
SECRET_ENV = ("OPENAI_API_KEY", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")
SECRET_NAME = re.compile(r"(?:^|_)(?:API_?KEY|KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIALS?)$", re.IGNORECASE)
MIN_SECRET_LEN = 8  # shorter values ("1", "true") would scrub ordinary words
_SHAPES = [
    (re.compile(r"(?i)(authorization[\s:=\"']{0,4})(?:(?:bearer|basic)\s+)?[^\s\"',}]+"), r"\1" + REDACTED),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=*-]{6,}"), r"\1 " + REDACTED),
    (re.compile(r"\bsk-[A-Za-z0-9_*-]{6,}"), REDACTED),
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), REDACTED),
    (re.compile(r"(?i)\b((?:api[_-]?key|secret|token|password)[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]{6,}"),
     r"\1" + REDACTED),
]


def configured_secrets(extra: Iterable[str | None] = ()) -> list[str]:
    """The secret values configured in this process's environment, plus `extra` (e.g. Settings.api_key)."""
    values = [os.environ.get(name) for name in SECRET_ENV]
    values += [value for name, value in os.environ.items() if SECRET_NAME.search(name)]
    values += list(extra)
    return sorted({v for v in values if v and len(v) >= MIN_SECRET_LEN}, key=len, reverse=True)


def scrub(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with every key-shaped string and every configured secret (and `secrets`) replaced by [redacted].

    Scrubbing twice changes nothing more: shapes go first, and none of them matches inside `[redacted]`.
    """
    for pattern, replacement in _SHAPES:
        text = pattern.sub(replacement, text)
    for secret in configured_secrets(secrets):
        text = text.replace(secret, REDACTED)
    return text
