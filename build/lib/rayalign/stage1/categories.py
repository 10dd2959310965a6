"""Categories for prompts that have none, from the judge model.

Unlabelled prompts (no category and no expected behaviour) are sent to the
judge's ``classify``; its answers are kept in the run directory so a resumed
stage 1, and the RL stage after it, ask about each prompt only once.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from collections.abc import Sequence

from rayalign.datafiles import read_records, write_records
from rayalign.judge.client import JudgeClient
from rayalign.runs import RunLayout
from rayalign.stage1.prompts import order_for_prefix_cache
from rayalign.types import Classification, Prompt


def _unlabelled(prompt: Prompt) -> bool:
    # A prompt with an expected behaviour but no category was labelled benign by its dataset.
    return prompt.category is None and prompt.expected is None


def needs_categories(cfg, prompts: Sequence[Prompt]) -> bool:
    """Whether :func:`categorise` would ask the judge about (or reuse answers for) any prompt."""
    return cfg.data.classify and any(_unlabelled(p) for p in prompts)


def categorise(cfg, prompts: Sequence[Prompt], client: JudgeClient | None, log=print) -> list[Prompt]:
    """``prompts`` with the judge's categories for unlabelled ones (``data.classify``),
    in prefix-cache order. Stages 1 and 2 share the answers saved by stage 1;
    ``client`` must reach a judge when some prompt has no saved answer yet."""
    if not needs_categories(cfg, prompts):
        return list(prompts)
    return order_for_prefix_cache(assign_categories(cfg, prompts, client, log))


def assign_categories(cfg, prompts: Sequence[Prompt], client: JudgeClient | None, log=print) -> list[Prompt]:
    """Unlabelled prompts (no category, no expected behaviour) get the judge
    model's category, or stay None when it answers none.

    Results are kept in ``stage1/categories.jsonl``, so a resumed run asks
    again only for prompts it has no answer for, and its shards come out the same.
    """
    path = RunLayout.of(cfg).categories
    known = {c.prompt_id: c for c in (read_records(path, Classification) if path.exists() else [])}
    todo = [p for p in prompts if _unlabelled(p) and p.id not in known]
    if todo:
        if client is None:
            raise RuntimeError(f"{len(todo)} prompts need a category and no judge was started")
        fresh = asyncio.run(client.classify(todo))
        known.update({c.prompt_id: c for c in fresh})
        write_records(path, known.values())
    asked = [known[p.id] for p in prompts if _unlabelled(p)]
    counts = collections.Counter(c.category or "none" if c.status == "ok" else "unscorable" for c in asked)
    log(
        f"[categories] {len(asked)} uncategorised prompts ({len(todo)} asked now): "
        + ", ".join(f"{k} {n}" for k, n in sorted(counts.items()))
    )
    return [
        dataclasses.replace(p, category=known[p.id].category) if _unlabelled(p) and known[p.id].status == "ok" else p
        for p in prompts
    ]
