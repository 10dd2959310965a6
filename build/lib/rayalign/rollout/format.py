"""The output format, defined once: reasoning in a think block, then the answer.

    <think>
    The request asks for ... self_harm.S1 applies ... style.S1 ...
    </think>
    I'm really sorry you're going through this ...

Models whose chat template has its own reasoning markers use the same tags.
:func:`split_completion` never guesses: anything off-format is flagged
malformed with the reason, so the filter can drop it and RL can penalise it.
"""

from __future__ import annotations

import re

from rayalign.types import Completion, FinishReason

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

FORMAT_INSTRUCTIONS = (
    f"First think step by step inside {THINK_OPEN} ... {THINK_CLOSE}. "
    f"After {THINK_CLOSE}, write only the final answer to the user."
)


def format_regex(max_new_tokens: int, *, opened: bool = False) -> str:
    r"""The format as a regular expression, for engines that can constrain decoding
    (``rollout.enforce_format``): a small model then always writes reasoning and
    an answer. Parts are printable ASCII without angle brackets (so the tags
    cannot repeat), each capped at (max_new_tokens - 16) / 2 characters: a token
    is at least one character, so the answer ends within the token budget.
    ``opened``: the prompt already opened the think block (a steered prefill),
    so the completion starts inside the reasoning.

    >>> format_regex(80)
    '<think>\\n[ -;=?-~\\n]{8,32}\\n</think>\\n[ -;=?-~\\n]{2,32}'
    >>> format_regex(80, opened=True)
    '[ -;=?-~\\n]{8,32}\\n</think>\\n[ -;=?-~\\n]{2,32}'
    """
    cap = max(16, (max_new_tokens - 16) // 2)
    part = r"[ -;=?-~\n]"
    body = rf"{part}{{8,{cap}}}\n</think>\n{part}{{2,{cap}}}"
    return body if opened else rf"<think>\n{body}"


def split_completion(text: str, finish_reason: FinishReason = "stop") -> Completion:
    """Split a completion into (reasoning, answer), flagging malformed ones.

    >>> split_completion("<think>allowed: general.P4</think>Run kill -9 PID.")
    Completion(reasoning='allowed: general.P4', answer='Run kill -9 PID.', malformed=None)
    >>> split_completion("Sure, here you go").malformed
    'no_reasoning'
    """
    body = text.strip()
    if finish_reason == "length":
        reasoning, answer = _best_effort(body)
        return Completion(reasoning, answer, "truncated")
    if not body:
        return Completion("", "", "empty")
    if not body.startswith(THINK_OPEN):
        return Completion("", body, "no_reasoning")
    if body.count(THINK_OPEN) > 1 or body.count(THINK_CLOSE) > 1:
        reasoning, answer = _best_effort(body)
        return Completion(reasoning, answer, "repeated_reasoning")
    if THINK_CLOSE not in body:
        return Completion(body[len(THINK_OPEN) :].strip(), "", "unclosed_reasoning")
    inner, answer = body[len(THINK_OPEN) :].split(THINK_CLOSE, 1)
    reasoning, answer = inner.strip(), answer.strip()
    if not reasoning:
        return Completion("", answer, "empty_reasoning")
    if not answer:
        return Completion(reasoning, "", "no_answer")
    return Completion(reasoning, answer, None)


def _best_effort(body: str) -> tuple[str, str]:
    """Reasoning and answer as far as they can be told apart (for logging only)."""
    if THINK_CLOSE in body:
        inner, answer = body.split(THINK_CLOSE, 1)
        return inner.replace(THINK_OPEN, "").strip(), answer.strip()
    return body.replace(THINK_OPEN, "").strip(), ""


def trim_cut_answer(answer: str, *, min_chars: int = 80) -> str | None:
    """An answer the token limit cut mid-way, ended where its last complete sentence or paragraph ends;
    None when less than ``min_chars`` would be left.

    >>> trim_cut_answer("First point, in full.\\n\\nSecond point, also whole. Third poi", min_chars=10)
    'First point, in full.\\n\\nSecond point, also whole.'
    >>> trim_cut_answer("A heading\\n\\n- an item\\n- another it", min_chars=5)
    'A heading'
    >>> trim_cut_answer("Too short. And cut", min_chars=80) is None
    True
    """
    body = answer.rstrip()
    ends = [body.rfind("\n\n")] + [m.end() for m in re.finditer(r"[.!?][)\"']?(?=\s)", body)]
    end = max(ends)
    return body[:end].rstrip() if end >= min_chars else None


def join_completion(reasoning: str, answer: str) -> str:
    """The training target for an SFT example, in the same format.

    >>> join_completion("r", "a")
    '<think>\\nr\\n</think>\\na'
    """
    return f"{THINK_OPEN}\n{reasoning.strip()}\n{THINK_CLOSE}\n{answer.strip()}"
