"""Typed records that cross stage and actor boundaries or are written to disk.

Every record is a frozen dataclass: actors, Ray Data batches and JSONL files
carry these, never free-form dicts.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Literal, TypeVar

T = TypeVar("T")

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
    prefill: str = ""
    """Text the assistant turn starts with (stage-1 steering); the sampler writes the rest."""


@dataclass(frozen=True)
class SamplingSettings:
    """How a sampler draws completions for one batch of prompts."""

    n: int = 1
    """Completions per prompt."""
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int = 0
    """Base seed; each prompt's seed derives from it and the prompt id."""
    stop: tuple[str, ...] = ()
    json_schema: str = ""
    """Constrain output to this JSON schema (vLLM structured outputs); empty = free text."""
    regex: str = ""
    """Constrain output to this regular expression (vLLM structured outputs); empty = free text."""


FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class Rollout:
    """One sampled completion with what RL needs to learn from it."""

    prompt_id: str
    sample_index: int
    text: str
    prompt_token_ids: tuple[int, ...]
    """(P,) the chat-templated prompt as the sampler saw it."""
    token_ids: tuple[int, ...]
    """(T,) sampled tokens, the end-of-turn token included when generated."""
    logprobs: tuple[float, ...]
    """(T,) log p(token | prefix) under the sampler's weights at temperature 1."""
    finish_reason: FinishReason
    policy_version: int = 0
    """Weights version that produced the sample (0 = initial weights)."""
    backend: str = ""
    seconds: float = 0.0
    """Wall time of the generate call that produced this sample."""


@dataclass(frozen=True)
class Completion:
    """A completion split into reasoning and final answer by the output format."""

    reasoning: str
    answer: str
    malformed: str | None = None
    """None when well-formed, else why not (e.g. no_answer, truncated)."""
    trimmed: bool = field(default=False, repr=False)
    """The length limit cut the answer; it was ended at its last complete sentence (generate.trim_cut_answers)."""


VerdictStatus = Literal["ok", "unscorable"]


@dataclass(frozen=True)
class JudgeRequest:
    """What the judge scores: a conversation, an answer, optionally the reasoning."""

    prompt: Prompt
    answer: str
    reasoning: str | None = None
    """Shown to the judge for stage-1 filtering; None (hidden) for RL rewards."""
    request_id: str = ""


@dataclass(frozen=True)
class Verdict:
    """A judge's structured opinion of one answer. Unscorable is not zero."""

    status: VerdictStatus
    score: float | None
    """Overall score on 0-10; None when unscorable."""
    rules: tuple[str, ...] = ()
    """Spec rule ids the judge says apply."""
    behavior: Behavior | None = None
    """What the answer did: comply, refuse or safe_complete."""
    compliant: bool | None = None
    """Does the answer follow the content policy?"""
    style_ok: bool | None = None
    """Does it follow the style guideline for its behaviour?"""
    helpfulness: float | None = None
    """0-10."""
    agrees_with_hint: bool | None = None
    """Whether the judge agrees with the label hint, when one was given."""
    explanation: str = ""
    """The judge's short reason, or why the verdict is unscorable."""
    spec_hash: str = ""
    template_hash: str = ""
    request_id: str = ""
    runs: int = 1
    """Judge runs aggregated into this verdict (k)."""
    decided_by: Literal["judge", "cascade"] = "judge"
    """Who decided: the LLM judge, or the deterministic behaviour check that runs before it
    (``judge.cascade``: a detected behaviour that contradicts the expected one, no judge call)."""


# ------------------------------------------------------- JSON round trip


def to_dict(record) -> dict:
    """A record as plain JSON-able data (tuples become lists)."""
    return dataclasses.asdict(record)


def from_dict(cls: type[T], data: dict) -> T:
    """Rebuild a record from :func:`to_dict` output, nested records included.

    >>> from_dict(Message, {"role": "user", "content": "hi"})
    Message(role='user', content='hi')
    """
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _rebuild(hints[f.name], data[f.name])
    return cls(**kwargs)


def _rebuild(tp, value):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if value is None:
        return None
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value)
    if origin is tuple:
        return tuple(_rebuild(args[0], v) for v in value)
    if origin in (types.UnionType, typing.Union):
        inner = [a for a in args if a is not type(None)]
        return _rebuild(inner[0], value) if len(inner) == 1 else value
    return value


def to_json(record) -> str:
    return json.dumps(to_dict(record), ensure_ascii=False)


def from_json(cls: type[T], text: str) -> T:
    return from_dict(cls, json.loads(text))


@dataclass(frozen=True)
class SFTExample:
    """A stage-1 training example: the conversation WITHOUT the spec, then
    the reasoning and answer the spec-conditioned model wrote for it."""

    prompt: Prompt
    """The original conversation (no spec text), ending on a user turn."""
    reasoning: str
    answer: str
    score: float | None = None
    """Min-over-k judge score that let it through the filter (None: not judged, e.g. mix-in data)."""
    sample_index: int = 0
    model: str = ""
    """Model that wrote the completion."""
    spec_hash: str = ""
    template_hash: str = ""
    """Hash of the judge templates that scored it."""
    generation_template_hash: str = ""
    rules: tuple[str, ...] = ()
    """Rule ids the judge said apply."""
    spec_category_hash: str = ""
    """Hash of the spec(category) it was generated and judged with (``specdiff.category_hash``);
    empty in files written before it was recorded."""


@dataclass(frozen=True)
class Experience:
    """One judged rollout as the RL learners train on it (sent from the
    learner that drives the step to every other learner)."""

    prompt_id: str
    prompt_token_ids: tuple[int, ...]
    """(P,) the chat-templated prompt."""
    token_ids: tuple[int, ...]
    """(T,) the sampled completion."""
    logprobs: tuple[float, ...]
    """(T,) the sampler's log-probs: the PPO ratio's denominator."""
    advantage: float
    reward: float | None
    """None: unscorable, so the sample is left out of the update entirely."""
    policy_version: int = 0
    ref_logprobs: tuple[float, ...] = ()
    """(T,) the frozen reference's log-probs when scored off the learners (rl.reference.placement:
    engine); empty: each learner scores its share itself."""


@dataclass(frozen=True)
class Classification:
    """The judge model's category for one uncategorised prompt."""

    prompt_id: str
    status: VerdictStatus
    category: str | None = None
    """A spec category id, or None for none (benign) or when unscorable."""
    explanation: str = ""
    """Why it is unscorable; empty otherwise."""
    template_hash: str = ""
