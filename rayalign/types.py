"""Typed records that cross stage and actor boundaries or are written to disk.

Every record is a frozen dataclass: actors, Ray Data batches and JSONL files
carry these, never free-form dicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Behavior = Literal["comply", "refuse", "safe_complete"]
"""What a response to a request should do, as the spec sorts requests."""

BEHAVIORS: tuple[Behavior, ...] = ("comply", "refuse", "safe_complete")

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Message:
    """One chat turn."""

    role: Role
    content: str


@dataclass(frozen=True)
class Prompt:
    """A conversation ending on a user turn, with its safety labels."""

    id: str
    messages: tuple[Message, ...]
    category: str | None = None
    """Spec category id, or None when unknown or benign."""
    expected: Behavior | None = None
    """Expected behaviour from the dataset's (possibly noisy) labels."""
    source: str = ""
    """Where the prompt came from (file or dataset name)."""
