"""A generated identifier-lookup set: manuals full of exact tokens, with near-miss twins, and queries for them.

Each fact names one identifier of a kind users search for verbatim: a UUID key, a part number (`HX-7/220`), a
version (`2.4.1`), a snake_case option (`max_wal_size`), an error code (`E1234`) or a hex id (`0x3fa9c2d1`).
Every identifier has twins that differ in one component (`HX-7/221`, `2.4.2`, `max_wal_senders`, `E1243`) in
other facts, and all facts of a kind share one sentence pattern, so meaning cannot tell them apart: only the exact
token can. A lookup succeeds when the first hit contains the asked-for token whole. Seeded and deterministic.
"""

from __future__ import annotations

import random
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

WORDS = ("wal", "size", "max", "min", "buffer", "cache", "timeout", "retry", "log", "level", "sync", "commit", "page",
         "flush", "delay", "limit", "queue", "depth", "worker", "threads", "memory", "pool", "replica", "lag")
PARTS = ("intake valve seal", "drive shaft bearing", "pressure relief spring", "coolant pump impeller",
         "filter housing gasket", "control board fuse", "fan motor bracket", "sensor mounting plate")
ERRORS = ("the controller lost its heartbeat", "the disk is full", "a checksum did not match",
          "the licence has expired", "the network link went down", "a sensor reads out of range")
CHANGES = ("fixed the journal replay", "added online resizing", "dropped the legacy driver",
           "changed the default port", "sped up cold starts", "removed the deprecated flag")
PLACES = ("rack 4 of the east hall", "the backup cabinet", "the pump room", "the roof enclosure",
          "the control desk", "the loading bay")


@dataclass(frozen=True)
class Lookup:
    kind: str
    token: str  # the exact identifier the first hit must contain
    query: str


def _twins(kind: str, rng: random.Random) -> list[str]:
    """One identifier and 2-3 twins differing in a single component."""
    if kind == "uuid":
        base = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        return [base] + [base[:-4] + f"{rng.getrandbits(16):04x}" for _ in range(2)]
    if kind == "part":
        prefix = f"{rng.choice('ABCDEHKMRTX')}{rng.choice('ABCDEHKMRTX')}-{rng.randint(1, 9)}"
        number = rng.randint(100, 898)
        return [f"{prefix}/{number}", f"{prefix}/{number + 1}", f"{prefix[:-1]}{rng.randint(1, 9)}/{number}"]
    if kind == "version":
        major, minor, patch = rng.randint(1, 9), rng.randint(0, 12), rng.randint(0, 9)
        return [f"{major}.{minor}.{patch}", f"{major}.{minor}.{patch + 1}", f"{major}.{minor + 1}.{patch}"]
    if kind == "option":
        first, second, third, other = rng.sample(WORDS, 4)
        return [f"{first}_{second}_{third}", f"{first}_{second}_{other}", f"{other}_{second}_{third}"]
    if kind == "error":
        code = rng.randint(1000, 9989)
        swapped = str(code)[:2] + str(code)[3] + str(code)[2]
        return [f"E{code}", f"E{code + 1}"] + ([f"E{swapped}"] if swapped != str(code) else [])
    base = f"0x{rng.getrandbits(32):08x}"
    return [base, base[:-1] + ("0" if base[-1] != "0" else "1")]


KINDS = ("uuid", "part", "version", "option", "error", "hex")


def _fact(kind: str, token: str, rng: random.Random) -> str:
    if kind == "uuid":
        return f"The value of key {token} is {uuid.UUID(int=rng.getrandbits(128), version=4)}."
    if kind == "part":
        return f"Part {token} is the {rng.choice(PARTS)} of the pump assembly."
    if kind == "version":
        return f"Release {token} {rng.choice(CHANGES)}."
    if kind == "option":
        return f"The option {token} sets the {rng.choice(WORDS)} {rng.choice(WORDS)} limit, default {rng.randint(1, 512)}."
    if kind == "error":
        return f"Error {token} means that {rng.choice(ERRORS)}."
    return f"Device {token} is installed in {rng.choice(PLACES)}."


def _query(kind: str, token: str, rng: random.Random) -> str:
    styles = {
        "uuid": [f"What is the value of key {token}?", token, f"value for {token}"],
        "part": [f"Which component is part {token}?", token, f"part number {token}"],
        "version": [f"What changed in release {token}?", f"version {token}", f"release notes {token}"],
        "option": [f"What does {token} control?", token, f"default of {token}"],
        "error": [f"What does error {token} mean?", token, f"error code {token}"],
        "hex": [f"Where is device {token} installed?", token, f"device {token}"],
    }
    return rng.choice(styles[kind])


def contains_token(text: str, token: str) -> bool:
    """Whether `token` occurs in `text` whole: not inside a longer identifier (`2.4.1` is not in `2.4.10`)."""
    return re.search(rf"(?<![\w./-]){re.escape(token)}(?![\w]|[./-]\w)", text) is not None


def generate(root: Path, *, documents: int = 120, facts_per_document: int = 12, seed: int = 0) -> list[Lookup]:
    """Write `documents` manuals under `root`; return one lookup per identifier family (the first of its twins)."""
    rng = random.Random(seed)
    facts: list[str] = []
    lookups: list[Lookup] = []
    seen: set[str] = set()
    while len(facts) < documents * facts_per_document:
        kind = KINDS[len(lookups) % len(KINDS)]
        family = _twins(kind, rng)
        if family[0] in seen:
            continue
        family = [family[0]] + [token for token in family[1:] if token not in seen]
        seen.update(family)
        lookups.append(Lookup(kind, family[0], _query(kind, family[0], rng)))
        facts.extend(_fact(kind, token, rng) for token in family)
    rng.shuffle(facts)
    root.mkdir(parents=True, exist_ok=True)
    for n in range(documents):
        body = facts[n * facts_per_document:] if n == documents - 1 else facts[n * facts_per_document:(n + 1) * facts_per_document]
        (root / f"manual-{n:03d}.txt").write_text("\n\n".join(body) + "\n", encoding="utf-8")
    return lookups
