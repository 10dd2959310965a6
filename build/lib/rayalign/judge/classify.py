"""Category assignment for prompts that come without one: the judge model sorts
a request into a spec category (or none) from the categories' summaries.

Pure: renders the prompt from ``specs/templates/classify.md`` and parses the
reply strictly. The reply must be exactly one category id or ``none``; a
local vLLM judge is constrained to that set (:func:`category_regex`), other
backends are told to answer so and anything else is unscorable, never a
guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from string import Template

from rayalign.errors import LocatedError, RayalignError
from rayalign.judge.rubric import conversation_text, quote_block, quote_tag
from rayalign.spec import Spec
from rayalign.templates import MAIN, content_hash, read_template, split_sections, template_dir
from rayalign.templates import check_placeholders as _check
from rayalign.types import Classification, Message, Prompt

TEMPLATE_FILE = "classify.md"
NONE = "none"
_PLACEHOLDERS = {
    MAIN: (frozenset({"categories"}), frozenset({"categories"})),
    "user": (frozenset({"tag", "conversation"}), frozenset({"tag", "conversation"})),
}


class ClassifyTemplateError(LocatedError):
    pass


class CategoryParseError(RayalignError):
    pass


@dataclass(frozen=True)
class ClassifyTemplate:
    system: str
    user: str
    hash: str


def load_classify_template(spec_dir: str | Path) -> ClassifyTemplate:
    """Read and check ``<spec_dir>/templates/classify.md`` (errors name file and line)."""
    path = template_dir(spec_dir) / TEMPLATE_FILE
    raw, text = read_template(path, ClassifyTemplateError, "classification")
    parts = split_sections(text, str(path), (MAIN, "user"), ClassifyTemplateError)
    for part, (first_line, body) in parts.items():
        _check(body, first_line, str(path), part, _PLACEHOLDERS, ClassifyTemplateError)
    return ClassifyTemplate(parts[MAIN][1].strip(), parts["user"][1].strip(), content_hash(raw))


def render_classify_messages(spec: Spec, template: ClassifyTemplate, prompt: Prompt) -> tuple[Message, Message]:
    """(system, user) chat messages asking for ``prompt``'s category."""
    categories = "\n".join(f"- {c.id} ({c.title}): {c.summary}" for c in spec.categories)
    conversation = conversation_text(prompt.messages)
    tag = quote_tag([conversation])
    system = Template(template.system).substitute(categories=categories)
    user = Template(template.user).substitute(tag=tag, conversation=quote_block("CONVERSATION", tag, conversation))
    return Message("system", system + "\n"), Message("user", user + "\n")


def category_regex(spec: Spec) -> str:
    """The replies a constrained judge may give: one category id or none.

    >>> import re; from rayalign.spec import Category, Spec
    >>> s = Spec("s", "1", "t", "", (Category("self_harm", "t", "s", (), (), ()),), (), ())
    >>> bool(re.fullmatch(category_regex(s), "self_harm")), bool(re.fullmatch(category_regex(s), "hacking"))
    (True, False)
    """
    return "(" + "|".join(re.escape(c) for c in (*spec.category_ids, NONE)) + ")"


def parse_category(reply: str, spec: Spec) -> str | None:
    """A reply -> a category id, or None for ``none``; anything else raises.

    Surrounding whitespace, quotes, backticks and a final full stop are
    tolerated; any other text is not.
    """
    text = reply.strip(" \t\n`'\".").lower()
    if text == NONE:
        return None
    if text in spec.category_ids:
        return text
    raise CategoryParseError(f"expected one of {', '.join((*spec.category_ids, NONE))}; got {reply[:80]!r}")


def classification(prompt: Prompt, reply: str, spec: Spec, template: ClassifyTemplate) -> Classification:
    """A judge reply -> a typed classification (unscorable when it does not parse)."""
    try:
        category = parse_category(reply, spec)
    except CategoryParseError as e:
        return Classification(prompt.id, "unscorable", None, str(e), template.hash)
    return Classification(prompt.id, "ok", category, "", template.hash)
