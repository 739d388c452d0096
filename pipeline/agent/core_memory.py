"""Working memory, as in MemGPT: named text blocks with character limits (`task`, `notes`).

They are shown in the system message, edited by the agent, and survive eviction.
"""

from __future__ import annotations

from dataclasses import dataclass


MIN_NOTE = 40  # an append keeps at least this much of its content (or all of a shorter one), else it fails
# what a full block is assumed to hold when budgeting: notes-like text with chunk ids and numbers
_FILLER = ("The Hydra-7 pump holds at most 16 bar; replace its seals every 2000 hours "
           "(chunk 4f1c2a9e0b7d3c5e8a61, p. 12). ")


class MemoryEditError(ValueError):
    """A core-memory edit that cannot be made; the message is shown to the model."""


@dataclass
class Block:
    name: str
    limit: int  # characters
    value: str = ""


class CoreMemory:
    """Working context: named blocks with character limits, rendered into the system message."""

    def __init__(self, blocks: list[Block]) -> None:
        self.blocks = {b.name: b for b in blocks}

    @classmethod
    def for_window(cls, window: int) -> "CoreMemory":
        """The default blocks, sized for a context window of `window` tokens."""
        return cls([
            Block("task", max(300, min(1000, window // 20))),  # the question being answered now
            Block("notes", max(300, min(3000, window // 16))),  # findings, with their chunk ids and sources
        ])

    def _block(self, name: str) -> Block:
        if name not in self.blocks:
            raise MemoryEditError(f"no memory block named {name!r}; blocks are: {', '.join(self.blocks)}")
        return self.blocks[name]

    def set(self, name: str, value: str) -> None:
        """Overwrite a block (cut to its limit); used by the runner, not the model."""
        block = self._block(name)
        block.value = value[:block.limit]

    def append(self, name: str, content: str) -> tuple[str, int]:
        """Add `content` on a line of its own: (the block's value, characters of `content` left out).

        Content longer than the room left is cut at a word boundary to fit, and the caller says so: small models
        retried the same too-long note step after step. A block with almost no room left is an error.
        """
        block = self._block(name)
        room = block.limit - len(block.value) - (1 if block.value else 0)
        kept = content if len(content) <= room else content[:room].rsplit(" ", 1)[0].rstrip()
        if len(kept) < min(len(content), MIN_NOTE):
            raise MemoryEditError(
                f"block {name!r} is full ({len(block.value)}/{block.limit} characters); make room with "
                f"core_memory_replace (new_content shorter than old_content) first")
        block.value = f"{block.value}\n{kept}" if block.value else kept
        return block.value, len(content) - len(kept)

    def replace(self, name: str, old: str, new: str) -> str:
        """Replace the first `old` with `new`; an empty `old` appends `new` (as models write a first note)."""
        block = self._block(name)
        if not old.strip():
            return self.append(name, new)[0]
        if old not in block.value:
            raise MemoryEditError(f"old_content was not found in block {name!r}; copy it exactly")
        value = block.value.replace(old, new, 1)
        if len(value) > block.limit:
            raise MemoryEditError(f"block {name!r} would hold {len(value)} characters, over its limit of {block.limit}")
        block.value = value
        return value

    def render(self, *, full: bool = False) -> str:
        """The blocks as shown to the model; `full` pads each to its limit (for worst-case budgeting)."""
        parts = []
        for b in self.blocks.values():
            value = (_FILLER * (1 + b.limit // len(_FILLER)))[:b.limit] if full else b.value
            parts.append(f'<{b.name} chars="{len(b.value)}/{b.limit}">\n{value}\n</{b.name}>')
        return "\n".join(parts)

    def to_dict(self) -> dict[str, str]:
        return {name: b.value for name, b in self.blocks.items()}

    def load(self, values: dict[str, str]) -> None:
        for name, value in values.items():
            if name in self.blocks:
                self.set(name, value)
