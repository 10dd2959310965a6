"""What the base model sees in stage 1: spec(category), instructions, the conversation.

The generation prompt is pure: it returns a new :class:`Prompt` with the same
id and keeps no link to the original. Callers keep the original prompts (keyed
by id) next to the generation prompts: rollouts carry ``prompt_id``, and the
SFT example is built from the *original* conversation, i.e. with the spec
removed, as the paper does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
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
from rayalign.types import Message, Prompt

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
