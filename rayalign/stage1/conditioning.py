"""What the base model sees in stage 1: spec(category), instructions, the conversation.

The generation prompt is pure: it returns a new :class:`Prompt` with the same
id and keeps no link to the original. Callers keep the original prompts (keyed
by id) next to the generation prompts: rollouts carry ``prompt_id``, and the
SFT example is built from the *original* conversation, i.e. with the spec
removed, as the paper does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import takewhile
from pathlib import Path
from string import Template

from rayalign.errors import LocatedError
from rayalign.rollout.format import FORMAT_INSTRUCTIONS, THINK_CLOSE, THINK_OPEN
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
from rayalign.types import BEHAVIORS, Behavior, Message, Prompt

GENERATION_FILE = "generate_system.md"


class PromptTemplateError(LocatedError):
    """A generation prompt template that is missing or malformed."""


_CONVERSATION_SYSTEM = "conversation_system"
_PLACEHOLDERS: Placeholders = {
    MAIN: (
        frozenset({"spec", "category", "format_instructions", "think_open", "think_close"}),
        frozenset({"spec", "format_instructions"}),
    ),
    _CONVERSATION_SYSTEM: (frozenset({"system", "category"}), frozenset({"system"})),
}


@dataclass(frozen=True)
class GenerationTemplates:
    """``specs/templates/generate_system.md`` in parts; ``_PLACEHOLDERS`` lists their ``$names``.

    ``system`` starts with ``$spec`` (then the instructions); ``conversation_system``
    (after ``<!-- section: conversation_system -->``) carries a conversation's own system message.
    """

    system: str
    conversation_system: str
    hash: str
    """``sha256:`` + 16 hex digits of the file's bytes."""


def load_generation_templates(spec_dir: str | Path) -> GenerationTemplates:
    """Read and check ``<spec_dir>/templates/generate_system.md``.

    A missing file or section, an unknown or missing ``$placeholder``, or a
    system part that does not start with ``$spec`` raises
    :class:`PromptTemplateError` naming the file and, where there is one, the line.
    """
    path = template_dir(spec_dir) / GENERATION_FILE
    raw, text = read_template(path, PromptTemplateError, "generation")
    parts = split_sections(text, str(path), (MAIN, _CONVERSATION_SYSTEM), PromptTemplateError)
    check_starts_with_spec(parts[MAIN][1], str(path), PromptTemplateError, "prompts of one category")
    for part, (first_line, body) in parts.items():
        check_placeholders(body, first_line, str(path), part, _PLACEHOLDERS, PromptTemplateError)
    return GenerationTemplates(parts[MAIN][1], parts[_CONVERSATION_SYSTEM][1], content_hash(raw))


def generation_prompt(spec: Spec, templates: GenerationTemplates, prompt: Prompt) -> Prompt:
    """What the base model sees in stage 1: spec(category) and instructions, then the conversation.

    Returns a new prompt (same id, category, expected and source) whose first
    message is a system message starting with ``render_for(spec,
    prompt.category)``, followed by the instructions (analyse, cite the rules
    that apply, decide, cite the style rule, reasoning inside the think block,
    an answer free of rule ids). It is identical for every prompt of a
    category, so they share it as a prefix. A conversation's own leading
    system message(s) are folded in after the instructions (the
    ``conversation_system`` part), since many chat templates accept only one
    system message, first; the other messages follow unchanged. ``prompt``
    itself is not modified: keep it to build the SFT example without the spec.
    """
    category = prompt.category or "none given"
    system = (
        Template(templates.system)
        .substitute(
            spec=render_for(spec, prompt.category),
            category=category,
            format_instructions=FORMAT_INSTRUCTIONS,
            think_open=THINK_OPEN,
            think_close=THINK_CLOSE,
        )
        .rstrip()
    )
    leading = len(list(takewhile(lambda m: m.role == "system", prompt.messages)))
    if leading:
        own = "\n\n".join(m.content for m in prompt.messages[:leading])
        extra = Template(templates.conversation_system).substitute(system=own, category=category)
        system = f"{system}\n\n{extra.strip()}"
    messages = (Message("system", system + "\n"), *prompt.messages[leading:])
    return replace(prompt, messages=messages)


# ------------------------------------------------------------------ behaviour steering

STEER_FILE = "steer.md"
STEER_MODES = ("none", "instruction", "prefix", "both")
_BEHAVIOR_PHRASES: dict[Behavior, str] = {
    "refuse": "refuse",
    "comply": "comply and help fully",
    "safe_complete": "give a safe completion",
}
_PREFIX_PLACEHOLDERS = frozenset({"think_open", "title", "category", "rules", "style"})
SAFE_COMPLETION = "safe_completion"
"""The optional section of steer.md with the safe completions, one ``category: text`` line each."""
_STEER_PLACEHOLDERS: Placeholders = {
    MAIN: (frozenset({"behavior_phrase"}), frozenset({"behavior_phrase"})),
    **{b: (_PREFIX_PLACEHOLDERS, frozenset({"think_open", "rules", "style"})) for b in BEHAVIORS},
    "refusal": (frozenset({"title", "category"}), frozenset()),
    SAFE_COMPLETION: (frozenset({"title", "category"}), frozenset()),
}
DEFAULT_CATEGORY = "*"
"""The key of the safe completion for a category without its own line."""


@dataclass(frozen=True)
class SteerTemplates:
    """``specs/templates/steer.md``: the instruction (main part) and one reasoning opening per behaviour."""

    instruction: str
    refuse: str
    comply: str
    safe_complete: str
    refusal: str
    """The refusals the spec's style rules prescribe (``generate.refusals: spec``), one per line."""
    hash: str
    safe_completions: Mapping[str, str] = field(default_factory=dict)
    """Category id (or ``*``, any other) -> the safe completion the spec's safe-completion style rules
    prescribe (``generate.safe_completions: spec``); empty without the section."""
    safe_completion_lines: Mapping[str, int] = field(default_factory=dict)
    """Where each safe completion is in steer.md, for errors."""

    def prefix(self, behavior: Behavior) -> str:
        return {"refuse": self.refuse, "comply": self.comply, "safe_complete": self.safe_complete}[behavior]

    def refusal_for(self, prompt_id: str) -> str:
        r"""One of the refusal lines, the same for a prompt on every run: SFT sees several wordings, not one.

        >>> t = SteerTemplates("", "", "", "", "Sorry, no.\n\nI can't help with that.", "")
        >>> sorted({t.refusal_for(str(i)) for i in range(20)})
        ["I can't help with that.", 'Sorry, no.']
        """
        lines = [line.strip() for line in self.refusal.splitlines() if line.strip()]
        return lines[int(hashlib.sha256(prompt_id.encode()).hexdigest(), 16) % len(lines)]

    def safe_completion(self, category: str) -> str:
        """The safe completion of ``category``, or the default one; "" when there is neither."""
        return self.safe_completions.get(category, self.safe_completions.get(DEFAULT_CATEGORY, ""))


def _safe_completions(body: str, first_line: int, file: str) -> tuple[dict[str, str], dict[str, int]]:
    r"""The ``category: text`` lines of the safe_completion section (blank lines skipped).

    >>> _safe_completions("self_harm: You matter.\n\n*: Stay safe.", 10, "steer.md")
    ({'self_harm': 'You matter.', '*': 'Stay safe.'}, {'self_harm': 10, '*': 12})
    """
    texts: dict[str, str] = {}
    lines: dict[str, int] = {}
    for number, line in enumerate(body.split("\n"), start=first_line):
        if not line.strip():
            continue
        key, sep, text = line.partition(":")
        key = key.strip()
        if not sep or not text.strip() or not (key == DEFAULT_CATEGORY or key.isidentifier()):
            raise PromptTemplateError("expected 'category: text' (or '*: text')", file=file, line=number)
        if key in texts:
            raise PromptTemplateError(f"a second safe completion for {key!r}", file=file, line=number)
        texts[key], lines[key] = text.strip(), number
    return texts, lines


def check_safe_completions(spec: Spec, templates: SteerTemplates, spec_dir: str | Path) -> None:
    """Every category with a safe-completion rule has a safe completion, and every line names a category."""
    file = str(template_dir(spec_dir) / STEER_FILE)
    for key, line in templates.safe_completion_lines.items():
        if key != DEFAULT_CATEGORY and key not in spec.category_ids:
            known = ", ".join(spec.category_ids)
            raise PromptTemplateError(f"unknown category {key!r}; known: {known}", file=file, line=line)
    needed = [c for c in spec.category_ids if any(r.behavior == "safe_complete" for r in spec.category(c).rules)]
    missing = [c for c in needed if not templates.safe_completion(c)]
    if missing:
        raise PromptTemplateError(
            f"no safe completion for {', '.join(missing)} (add a '{SAFE_COMPLETION}' section "
            f"with a line per category, or a '{DEFAULT_CATEGORY}: ...' line)",
            file=file,
        )


def load_steer_templates(spec_dir: str | Path) -> SteerTemplates:
    """Read and check ``<spec_dir>/templates/steer.md`` (errors name the file and line)."""
    path = template_dir(spec_dir) / STEER_FILE
    raw, text = read_template(path, PromptTemplateError, "steering")
    parts = split_sections(
        text, str(path), (MAIN, *BEHAVIORS, "refusal"), PromptTemplateError, optional=(SAFE_COMPLETION,)
    )
    for part, (first_line, body) in parts.items():
        check_placeholders(body, first_line, str(path), part, _STEER_PLACEHOLDERS, PromptTemplateError)
    bodies = {name: body.strip() for name, (_, body) in parts.items()}
    first_line, body = parts.get(SAFE_COMPLETION, (1, ""))
    texts, lines = _safe_completions(body, first_line, str(path))
    return SteerTemplates(
        bodies[MAIN],
        bodies["refuse"],
        bodies["comply"],
        bodies["safe_complete"],
        bodies["refusal"],
        content_hash(raw),
        texts,
        lines,
    )


def steer_rules(spec: Spec, category: str, behavior: Behavior) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(content rule ids, style ids) of ``category`` for ``behavior``: what a steered opening cites.

    >>> from rayalign.spec import load_spec
    >>> spec = load_spec("specs")
    >>> steer_rules(spec, "self_harm", "refuse")
    (('self_harm.D1', 'self_harm.D2', 'self_harm.D3'), ('style.R1', 'style.R2', 'style.R3', 'self_harm.Y3'))
    """
    c = spec.category(category)
    rules = tuple(r.id for r in c.rules if r.behavior == behavior)
    style = tuple(s.id for s in (*spec.style, *c.style) if s.applies_to == behavior)
    return rules, style


def _join(ids: Sequence[str]) -> str:
    """Rule ids as a phrase.

    >>> _join(["a.D1", "a.D2", "a.D3"])
    'a.D1, a.D2 and a.D3'
    """
    return ids[0] if len(ids) == 1 else ", ".join(ids[:-1]) + " and " + ids[-1]


def steer_prefix(spec: Spec, templates: SteerTemplates, prompt: Prompt) -> str:
    """The opening of the reasoning for a prompt's expected behaviour, citing only the spec's ids.

    A prompt with no expected behaviour or no category gets just the opening
    tag, so every prompt of a steered run continues an open think block.
    """
    if prompt.expected is None or prompt.category is None:
        return THINK_OPEN + "\n"
    rules, style = steer_rules(spec, prompt.category, prompt.expected)
    text = Template(templates.prefix(prompt.expected)).substitute(
        think_open=THINK_OPEN,
        title=spec.category(prompt.category).title,
        category=prompt.category,
        rules=_join(rules) if rules else f"the {prompt.category} policy",
        style=_join(style),
    )
    return text.rstrip() + "\n"


def conditioned_prompt(
    spec: Spec,
    templates: GenerationTemplates,
    steer: SteerTemplates | None,
    mode: str,
    prompt: Prompt,
    *,
    close_reasoning: bool = False,
) -> Prompt:
    """The stage-1 prompt: :func:`generation_prompt`, plus steering by ``mode`` (see ``STEER_MODES``).

    ``instruction`` appends the expected behaviour to the system message;
    ``prefix`` pre-fills the assistant turn with :func:`steer_prefix`. Prompts
    without an expected behaviour get neither instruction nor an opening beyond
    the think tag. ``close_reasoning`` ends the think block after the opening
    of a labelled prompt, so the generator writes only the answer. The original
    ``prompt`` is unchanged: the SFT example is built from it, so neither the
    spec nor the instruction reaches training.
    """
    out = generation_prompt(spec, templates, prompt)
    if mode == "none" or steer is None:
        return out
    if mode in ("instruction", "both") and prompt.expected is not None:
        note = Template(steer.instruction).substitute(behavior_phrase=_BEHAVIOR_PHRASES[prompt.expected])
        system = Message("system", f"{out.messages[0].content.rstrip()}\n\n{note}\n")
        out = replace(out, messages=(system, *out.messages[1:]))
    if mode in ("prefix", "both"):
        prefill = steer_prefix(spec, steer, prompt)
        if close_reasoning and prompt.expected is not None and prompt.category is not None:
            prefill += THINK_CLOSE + "\n"
        out = replace(out, prefill=prefill)
    return out


@dataclass(frozen=True)
class Conditioned:
    """How one stage-1 prompt is answered: what the sampler sees and what the completion starts with."""

    sampled: Prompt | None
    """The prompt the generator samples, or None when the whole completion is rendered from the spec."""
    head: str
    """Completion text before the generator's output: its prefill, or a reasoning it never saw (plain)."""
    rendered: str = ""
    """A whole completion rendered from the spec (``generate.refusals`` or ``safe_completions: spec``), when
    ``sampled`` is None."""


def _render(line: str, spec: Spec, category: str) -> str:
    """A steer.md refusal or safe-completion line with ``$title`` and ``$category`` filled in (``$$``: a dollar)."""
    return Template(line).substitute(title=spec.category(category).title, category=category).strip()


def condition(
    spec: Spec, templates: GenerationTemplates, steer: SteerTemplates | None, g, prompt: Prompt
) -> Conditioned:
    """Stage-1 conditioning of one prompt under the ``generate`` config section ``g``.

    By default (and for a prompt without a label) the generator samples
    :func:`conditioned_prompt` and the completion is its prefill + output. With
    ``g.close_reasoning`` a labelled prompt's reasoning is the spec-rendered
    opening; ``answer_context: plain`` samples the bare conversation and puts
    that reasoning in front of the answer; ``refusals: spec`` renders a
    refuse-labelled prompt's whole completion (reasoning + the spec's refusal);
    ``safe_completions: spec`` renders a safe-complete-labelled one's (reasoning
    + its category's safe completion from steer.md).
    """
    labelled = steer is not None and prompt.expected is not None and prompt.category is not None
    if not (labelled and g.close_reasoning):
        sampled = conditioned_prompt(spec, templates, steer, g.steer, prompt, close_reasoning=g.close_reasoning)
        return Conditioned(sampled, sampled.prefill)
    reasoning = steer_prefix(spec, steer, prompt) + THINK_CLOSE + "\n"
    if g.refusals == "spec" and prompt.expected == "refuse":
        return Conditioned(None, "", reasoning + _render(steer.refusal_for(prompt.id), spec, prompt.category))
    if g.safe_completions == "spec" and prompt.expected == "safe_complete":
        return Conditioned(None, "", reasoning + _render(steer.safe_completion(prompt.category), spec, prompt.category))
    if g.answer_context == "plain":
        return Conditioned(prompt, reasoning)
    sampled = conditioned_prompt(spec, templates, steer, g.steer, prompt, close_reasoning=True)
    return Conditioned(sampled, sampled.prefill)
