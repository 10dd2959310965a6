"""Where judge replies come from. Every backend answers the same question:
given conversations, return ``n`` sampled replies for each.

- :class:`LocalJudge`: a judge model on this process through the rollout
  engines (vLLM or transformers): the default, and what Serve replicas run.
- :class:`rayalign.judge.openai_backend.OpenAIJudge`: any OpenAI-compatible
  chat-completions server (a vLLM server with a strong safety reasoner, or a
  hosted API).
- :class:`FunctionJudge`: a Python function that writes the verdict JSON; for
  tests and benchmarks that need a deterministic, cheap reward.
"""

from __future__ import annotations

import asyncio
import importlib
import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from rayalign.models import chat_prompt, load_tokenizer
from rayalign.rollout.engine import EngineConfig, build_backend, prompt_seed
from rayalign.types import JudgeRequest, Message, SamplingSettings


class JudgeBackend(Protocol):
    async def complete(
        self, conversations: Sequence[Sequence[Message]], n: int, requests: Sequence[JudgeRequest], regex: str = ""
    ) -> list[list[str]]:
        """``n`` replies per conversation (``requests`` are what was rendered, for function judges).

        ``regex`` replaces the backend's own reply constraint where it can
        constrain decoding (category assignment asks for one id).
        """


class LocalJudge:
    """A judge model in this process, batched through a rollout engine."""

    def __init__(
        self, engine: EngineConfig, *, max_new_tokens: int, temperature: float, regex: str = "", seed: int = 0
    ):
        self.engine = build_backend(engine)
        self.tokenizer = load_tokenizer(engine.model)
        self.max_new_tokens, self.temperature, self.seed = max_new_tokens, temperature, seed
        self.regex = regex if engine.backend == "vllm" else ""  # transformers cannot constrain
        self.calls = 0

    async def complete(self, conversations, n, requests, regex: str = "") -> list[list[str]]:
        return await asyncio.to_thread(self._complete, conversations, n, regex)

    def _complete(self, conversations, n, regex: str = "") -> list[list[str]]:
        self.calls += 1
        token_ids = [
            self.tokenizer(chat_prompt(self.tokenizer, c), add_special_tokens=False)["input_ids"] for c in conversations
        ]
        settings = SamplingSettings(
            n=n,
            temperature=self.temperature,
            max_new_tokens=self.max_new_tokens,
            seed=self.seed + self.calls,
            regex=(regex or self.regex) if self.engine.name == "vllm" else "",
        )
        seeds = [prompt_seed(settings.seed, str(i)) for i in range(len(conversations))]
        samples = self.engine.generate(token_ids, settings, seeds)
        return [[s.text for s in group] for group in samples]


VerdictFunction = Callable[[JudgeRequest], dict]
"""Maps a request to a verdict dict with the rubric's keys (see judge/rubric.py)."""


class FunctionJudge:
    """Replies produced by a Python function, serialised as the judge's JSON."""

    def __init__(self, function: VerdictFunction | str, threads: int = 64):
        self.function = load_function(function) if isinstance(function, str) else function
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="judge-function")
        """Its own threads: a batch's calls run at once (the default executor has cpu_count + 4, so a batch of 8
        on 2 cores took two rounds), and never wait behind the replica's other blocking calls."""

    async def complete(self, conversations, n, requests, regex: str = "") -> list[list[str]]:
        if regex:
            raise NotImplementedError("a function judge writes verdicts only; it cannot assign categories")
        # In threads: a slow function must not block the replica's event loop.
        loop = asyncio.get_running_loop()
        verdicts = await asyncio.gather(*(loop.run_in_executor(self.pool, self.function, r) for r in requests))
        return [[json.dumps(v)] * n for v in verdicts]


def load_function(path: str) -> VerdictFunction:
    """``package.module:function`` -> the function."""
    module, _, name = path.partition(":")
    if not module or not name:
        raise ValueError(f"judge function {path!r} must look like package.module:function")
    return getattr(importlib.import_module(module), name)
