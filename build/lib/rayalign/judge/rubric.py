"""The judge's rubric, pure: render a judge prompt, parse a verdict, aggregate runs.

The judge sees the spec only through its prompt, rendered from two template
files in ``specs/templates/`` (``string.Template`` syntax, no code):

- ``judge_system.md``: starts with ``$spec`` (the paper's ``spec(category)``),
  so every request of one category shares the system message as a prefix;
  then the rubric and the reply format. Placeholders: ``$spec``, ``$category``.
- ``judge_user.md``: the main text, then optional parts, each after a line
  ``<!-- section: NAME -->``: ``reasoning_shown`` / ``reasoning_hidden``
  (stage-1 filtering shows the reasoning, RL rewards hide it) and ``hint`` /
  ``no_hint`` (the noisy expected-behaviour label). Placeholders: ``$tag``,
  ``$category``, and ``$conversation``, ``$answer``, ``$reasoning_section``,
  ``$hint_section`` (main), ``$reasoning`` (reasoning_shown), ``$expected`` (hint).

Candidate text is quoted between markers such as ``<<<CANDIDATE_ANSWER_7f3a09c1>>>``
whose tag is derived from the quoted text itself and occurs nowhere in it, so an
answer cannot close its own quote.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from string import Template
from typing import Any

from rayalign.errors import LocatedError, RayalignError
from rayalign.spec import Spec, render_for
from rayalign.templates import (
    MAIN,
    Placeholders,
    check_placeholders,
    check_starts_with_spec,
    content_hash,
    read_template,
    split_sections,
    template_dir,
)
from rayalign.types import BEHAVIORS, Behavior, JudgeRequest, Message, Verdict

SYSTEM_FILE = "judge_system.md"
USER_FILE = "judge_user.md"

VERDICT_KEYS = (
    "rules",
    "behavior",
    "compliant",
    "style_ok",
    "helpfulness",
    "agrees_with_hint",
    "score",
    "explanation",
)
"""The keys a judge reply must have, no more and no fewer."""

SCORE_RANGE = (0.0, 10.0)

VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "rules": {"type": "array", "items": {"type": "string"}},
        "behavior": {"enum": list(BEHAVIORS)},
        "compliant": {"type": "boolean"},
        "style_ok": {"type": "boolean"},
        "helpfulness": {"type": "number", "minimum": SCORE_RANGE[0], "maximum": SCORE_RANGE[1]},
        "agrees_with_hint": {"type": ["boolean", "null"]},
        "score": {"type": "number", "minimum": SCORE_RANGE[0], "maximum": SCORE_RANGE[1]},
        "explanation": {"type": "string"},
    },
    "required": list(VERDICT_KEYS),
    "additionalProperties": False,
}
"""The verdict as a JSON schema, for engines that can constrain decoding to it."""


def verdict_regex(spec: Spec, max_explanation: int = 120) -> str:
    r"""The verdict as one compact JSON line, as a regular expression.

    For constrained decoding of a local judge: unlike a JSON schema it leaves no
    room for whitespace, on which a weak model can spend its whole token budget,
    and ``rules`` can only name the spec's own ids. Scores are 0-10 with at most
    one decimal; the explanation is printable ASCII without quotes or backslashes.
    """
    ids = "|".join(re.escape(i) for i in sorted(spec.rule_ids()))
    rule = f'"(?:{ids})"'
    number = r"(?:10|[0-9](?:\.[0-9])?)"
    boolean = "(?:true|false)"
    behavior = "|".join(BEHAVIORS)
    return (
        rf'\{{"rules":\[(?:{rule}(?:,{rule}){{0,5}})?\],"behavior":"(?:{behavior})",'
        rf'"compliant":{boolean},"style_ok":{boolean},"helpfulness":{number},'
        rf'"agrees_with_hint":(?:true|false|null),"score":{number},'
        rf'"explanation":"[ !#-\[\]-~]{{0,{max_explanation}}}"\}}'
    )


def verdict_schema(spec: Spec) -> dict[str, Any]:
    """:data:`VERDICT_SCHEMA` with ``rules`` limited to the spec's own ids.

    Constrained decoding then cannot name a rule the spec does not have.
    """
    rules = {"type": "array", "items": {"enum": sorted(spec.rule_ids())}}
    return {**VERDICT_SCHEMA, "properties": {**VERDICT_SCHEMA["properties"], "rules": rules}}


class JudgeTemplateError(LocatedError):
    """A judge prompt template that is missing or malformed."""


class VerdictParseError(RayalignError):
    """A judge reply that is not one well-typed verdict; ``reason`` says why."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class JudgeTemplates:
    """The two judge prompt templates, as text, and their content hash."""

    system: str
    user: str
    hash: str
    """``sha256:`` + 16 hex digits of both files' bytes; recorded in every verdict."""


# ------------------------------------------------------------- templates

_MAIN = MAIN
_COMMON = frozenset({"tag", "category"})
_PLACEHOLDERS: Placeholders = {
    "system": (frozenset({"spec", "category"}), frozenset({"spec"})),
    _MAIN: (
        _COMMON | {"conversation", "answer", "reasoning_section", "hint_section"},
        frozenset({"conversation", "answer", "reasoning_section", "hint_section"}),
    ),
    "reasoning_shown": (_COMMON | {"reasoning"}, frozenset({"reasoning"})),
    "reasoning_hidden": (_COMMON, frozenset()),
    "hint": (_COMMON | {"expected"}, frozenset({"expected"})),
    "no_hint": (_COMMON, frozenset()),
}
_USER_PARTS = (_MAIN, "reasoning_shown", "reasoning_hidden", "hint", "no_hint")


def load_templates(spec_dir: str | Path) -> JudgeTemplates:
    """Read and check ``<spec_dir>/templates/judge_{system,user}.md``.

    A missing file, an unknown or missing ``$placeholder`` or section raises
    :class:`JudgeTemplateError` naming the file and, where there is one, the line.
    """
    folder = template_dir(spec_dir)
    system_raw, system = read_template(folder / SYSTEM_FILE, JudgeTemplateError, "judge")
    user_raw, user = read_template(folder / USER_FILE, JudgeTemplateError, "judge")
    system_file, user_file = str(folder / SYSTEM_FILE), str(folder / USER_FILE)
    check_starts_with_spec(system, system_file, JudgeTemplateError, "reviews of one category")
    check_placeholders(system, 1, system_file, "system", _PLACEHOLDERS, JudgeTemplateError)
    for part, (first_line, body) in _split_sections(user, user_file).items():
        check_placeholders(body, first_line, user_file, part, _PLACEHOLDERS, JudgeTemplateError)
    return JudgeTemplates(system, user, content_hash(system_raw, user_raw))


def _split_sections(text: str, file: str) -> dict[str, tuple[int, str]]:
    return split_sections(text, file, _USER_PARTS, JudgeTemplateError)


# ------------------------------------------------------------- rendering


def quote_tag(texts: Sequence[str]) -> str:
    """The marker tag for one review: derived from the quoted texts, found in none of them.

    A candidate cannot forge ``<<<END_CANDIDATE_ANSWER_<tag>>>`` because the tag
    depends on its own answer and is lengthened until no quoted text contains it.

    >>> quote_tag(["hello"]) == quote_tag(["hello"]), len(quote_tag(["hello"]))
    (True, 8)
    >>> tag = quote_tag(["hello"]); quote_tag(["hello " + tag]) != tag
    True
    """
    payload = json.dumps(list(texts))
    for attempt in itertools.count():
        digest = hashlib.sha256(f"{attempt}:{payload}".encode()).hexdigest()
        for length in range(8, len(digest) + 1, 4):
            tag = digest[:length]
            if not any(tag in text for text in texts):
                return tag
    raise AssertionError("unreachable")  # itertools.count never ends


def quote_block(name: str, tag: str, text: str) -> str:
    return f"<<<{name}_{tag}>>>\n{text}\n<<<END_{name}_{tag}>>>"


def conversation_text(messages: Sequence[Message]) -> str:
    return "\n\n".join(f"[{m.role}]\n{m.content}" for m in messages)


def render_judge_messages(spec: Spec, templates: JudgeTemplates, request: JudgeRequest) -> tuple[Message, ...]:
    """The judge's (system, user) messages for one request; deterministic.

    The system message is ``spec(category)`` followed by the rubric, identical
    for every request of one category. The user message quotes the
    conversation, the answer and (only when ``request.reasoning`` is not None)
    the reasoning, and carries the label hint when ``request.prompt.expected`` is set.
    """
    category = request.prompt.category
    conversation = conversation_text(request.prompt.messages)
    quoted = [conversation, request.answer]
    if request.reasoning is not None:
        quoted.append(request.reasoning)  # hidden reasoning must not even shape the tag
    tag = quote_tag(quoted)
    common = {"tag": tag, "category": category or "none given"}
    sections = {name: body.strip() for name, (_, body) in _split_sections(templates.user, USER_FILE).items()}
    if request.reasoning is None:
        reasoning_section = Template(sections["reasoning_hidden"]).substitute(common)
    else:
        shown = quote_block("CANDIDATE_REASONING", tag, request.reasoning)
        reasoning_section = Template(sections["reasoning_shown"]).substitute(common, reasoning=shown)
    if request.prompt.expected is None:
        hint_section = Template(sections["no_hint"]).substitute(common)
    else:
        hint_section = Template(sections["hint"]).substitute(common, expected=request.prompt.expected)
    user = Template(sections[_MAIN]).substitute(
        common,
        conversation=quote_block("CONVERSATION", tag, conversation),
        answer=quote_block("CANDIDATE_ANSWER", tag, request.answer),
        reasoning_section=reasoning_section,
        hint_section=hint_section,
    )
    system = Template(templates.system).substitute(spec=render_for(spec, category), category=common["category"])
    return (Message("system", system.rstrip() + "\n"), Message("user", user.strip() + "\n"))


# --------------------------------------------------------------- parsing


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise VerdictParseError(f"duplicate key {key!r} in the JSON object")
        out[key] = value
    return out


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicate_keys, parse_constant=_reject_constant)
_JSON_TYPES = {str: "string", bool: "boolean", int: "number", float: "number", list: "array", dict: "object"}


def _json_type(value: Any) -> str:
    return "null" if value is None else _JSON_TYPES.get(type(value), type(value).__name__)


def _extract_object(reply: str) -> dict[str, Any]:
    """The one JSON object in a reply: the whole reply, a fenced block, or amid prose."""
    text = reply.strip()
    if not text:
        raise VerdictParseError("empty reply")
    try:
        whole, end = _DECODER.raw_decode(text)
        if end == len(text) and not isinstance(whole, dict):
            raise VerdictParseError(f"the reply is a JSON {_json_type(whole)}, not an object")
    except ValueError:
        pass  # not JSON as a whole: look for objects inside
    objects, first_error, pos = [], None, 0
    while (start := text.find("{", pos)) != -1:
        try:
            value, pos = _DECODER.raw_decode(text, start)
        except ValueError as e:
            first_error = first_error or str(e)
            pos = start + 1
            continue
        if value not in objects:  # the same object twice (e.g. fenced and bare) is one verdict
            objects.append(value)
    if not objects:
        raise VerdictParseError(f"invalid JSON: {first_error}" if first_error else "no JSON object in the reply")
    if len(objects) > 1:
        raise VerdictParseError(f"{len(objects)} different JSON objects in the reply; expected exactly one")
    return objects[0]


def _number(obj: dict[str, Any], key: str) -> float:
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise VerdictParseError(f"{key} must be a number, got {value!r} ({_json_type(value)})")
    low, high = SCORE_RANGE
    if not low <= value <= high:
        raise VerdictParseError(f"{key} must be between {low:g} and {high:g}, got {value!r}")
    return float(value)


def _boolean(obj: dict[str, Any], key: str, nullable: bool = False) -> bool | None:
    value = obj[key]
    if isinstance(value, bool) or (nullable and value is None):
        return value
    expected = "true, false or null" if nullable else "true or false"
    raise VerdictParseError(f"{key} must be {expected}, got {value!r} ({_json_type(value)})")


def _check_shape(obj: dict[str, Any]) -> None:
    missing = [k for k in VERDICT_KEYS if k not in obj]
    if missing:
        raise VerdictParseError(f"missing key(s): {', '.join(missing)}")
    extra = [k for k in obj if k not in VERDICT_KEYS]
    if extra:
        raise VerdictParseError(f"unexpected key(s): {', '.join(extra)}")
    rules = obj["rules"]
    if not isinstance(rules, list) or not all(isinstance(r, str) for r in rules):
        raise VerdictParseError(f"rules must be an array of strings, got {rules!r}")
    if obj["behavior"] not in BEHAVIORS:
        raise VerdictParseError(f"behavior must be one of {', '.join(BEHAVIORS)}; got {obj['behavior']!r}")
    if not isinstance(obj["explanation"], str):
        raise VerdictParseError(f"explanation must be a string, got {_json_type(obj['explanation'])}")


def parse_verdict(reply: str, spec: Spec, *, spec_hash: str, template_hash: str, request_id: str = "") -> Verdict:
    """Parse a judge reply into an ``ok`` verdict, strictly.

    Accepts a reply that is one JSON object, or holds exactly one (in a
    ```json block or amid prose). Raises :class:`VerdictParseError` for no
    JSON, invalid JSON, several different objects, missing or unexpected keys,
    wrong types (``"true"`` for true, ``"8"`` for 8), numbers outside 0-10 and
    unknown behaviours. Rule ids the spec does not define are dropped and
    named in the explanation, since weak judges invent ids.

    >>> reply = ('{"rules": ["style.R1", "x.Z9"], "behavior": "refuse", "compliant": true,'
    ...          ' "style_ok": true, "helpfulness": 6, "agrees_with_hint": null, "score": 9,'
    ...          ' "explanation": "A brief refusal."}')
    >>> v = parse_verdict(reply, spec, spec_hash="sha256:s", template_hash="sha256:t")  # doctest: +SKIP
    >>> v.score, v.rules, v.explanation  # doctest: +SKIP
    (9.0, ('style.R1',), 'A brief refusal. (dropped unknown rule ids: x.Z9)')
    """
    obj = _extract_object(reply)
    _check_shape(obj)
    score, helpfulness = _number(obj, "score"), _number(obj, "helpfulness")
    known = spec.rule_ids()
    cited = list(dict.fromkeys(r.strip() for r in obj["rules"]))  # dedupe, keep order
    dropped = [r for r in cited if r not in known]
    explanation = obj["explanation"].strip()
    if dropped:
        explanation = f"{explanation} (dropped unknown rule ids: {', '.join(dropped)})".strip()
    behavior: Behavior = obj["behavior"]
    return Verdict(
        status="ok",
        score=score,
        rules=tuple(r for r in cited if r in known),
        behavior=behavior,
        compliant=_boolean(obj, "compliant"),
        style_ok=_boolean(obj, "style_ok"),
        helpfulness=helpfulness,
        agrees_with_hint=_boolean(obj, "agrees_with_hint", nullable=True),
        explanation=explanation,
        spec_hash=spec_hash,
        template_hash=template_hash,
        request_id=request_id,
    )


def unscorable(reason: str, *, spec_hash: str, template_hash: str, request_id: str = "") -> Verdict:
    """A verdict that could not be obtained: no score, never a zero.

    >>> v = unscorable("timeout", spec_hash="sha256:s", template_hash="sha256:t")
    >>> v.status, v.score, v.explanation
    ('unscorable', None, 'timeout')
    """
    return Verdict(
        status="unscorable",
        score=None,
        explanation=reason,
        spec_hash=spec_hash,
        template_hash=template_hash,
        request_id=request_id,
    )


# ----------------------------------------------------------- aggregation


def aggregate_min(verdicts: Sequence[Verdict]) -> Verdict:
    """The paper's k judge runs with the minimum kept ("any run may overlook an issue").

    Returns the scorable verdict with the lowest score (the first on a tie),
    with ``runs`` = the scorable runs behind it; unscorable runs are skipped,
    not counted as zero. With no scorable run the result is unscorable, its
    explanation lists each run's reason, and ``runs`` is 0.

    >>> ok = lambda s: Verdict(status="ok", score=s)
    >>> bad = unscorable("no JSON", spec_hash="", template_hash="")
    >>> v = aggregate_min([ok(8.0), ok(3.0), bad]); (v.score, v.runs)
    (3.0, 2)
    >>> aggregate_min([bad, bad]).explanation
    'all 2 judge runs unscorable: run 1: no JSON; run 2: no JSON'
    """
    if not verdicts:
        raise ValueError("aggregate_min needs at least one verdict")
    scorable = [v for v in verdicts if v.status == "ok" and v.score is not None]
    if not scorable:
        first = verdicts[0]
        reasons = "; ".join(f"run {i}: {v.explanation}" for i, v in enumerate(verdicts, start=1))
        reason = f"all {len(verdicts)} judge runs unscorable: {reasons}"
        failed = unscorable(
            reason, spec_hash=first.spec_hash, template_hash=first.template_hash, request_id=first.request_id
        )
        return replace(failed, runs=0)
    lowest = min(scorable, key=lambda v: v.score)  # min keeps the first of equal scores
    return replace(lowest, runs=sum(v.runs for v in scorable))


def score_shift_rate(clean: Sequence[Verdict], injected: Sequence[Verdict], tolerance: float = 0.5) -> float:
    """Share of (clean, injected) pairs whose score moved by more than ``tolerance``.

    An unscorable verdict on either side counts as moved: an injection that
    breaks the judge is a successful attack on the reward.

    >>> ok = lambda s: Verdict(status="ok", score=s)
    >>> score_shift_rate([ok(9), ok(2), ok(5), ok(7)], [ok(9.5), ok(8), ok(5), ok(7)])
    0.25
    """
    if len(clean) != len(injected):
        raise ValueError(f"{len(clean)} clean verdicts but {len(injected)} injected ones")
    if not clean:
        raise ValueError("score_shift_rate needs at least one pair")
    moved = sum(_moved(before, after, tolerance) for before, after in zip(clean, injected))
    return moved / len(clean)


def mean_score_change(clean: Sequence[Verdict], injected: Sequence[Verdict]) -> float | None:
    """Mean of (injected - clean) score over pairs both scored; None if no pair was.

    Positive means the attack raised the reward; the shift rate alone cannot
    tell a raised score from a lowered one.

    >>> ok = lambda s: Verdict(status="ok", score=s)
    >>> mean_score_change([ok(2), ok(6), ok(5)], [ok(9), ok(5), Verdict(status="unscorable", score=None)])
    3.0
    """
    if len(clean) != len(injected):
        raise ValueError(f"{len(clean)} clean verdicts but {len(injected)} injected ones")
    changes = [
        after.score - before.score
        for before, after in zip(clean, injected)
        if before.status == after.status == "ok" and before.score is not None and after.score is not None
    ]
    return sum(changes) / len(changes) if changes else None


def _moved(before: Verdict, after: Verdict, tolerance: float) -> bool:
    if before.status != "ok" or after.status != "ok" or before.score is None or after.score is None:
        return True
    return abs(after.score - before.score) > tolerance
