"""The transformers sampler: the fallback engine and the reference for correctness."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from rayalign.models import load_model, resolve_model
from rayalign.rollout.engine import EngineConfig, Sampled
from rayalign.rollout.weight_sync import Bucket, GroupAddress, LoraSync, join_group, received
from rayalign.types import SamplingSettings


class HFBackend:
    """Batched ``generate`` with left padding; log-probs from the raw logits."""

    name = "transformers"

    def __init__(self, config: EngineConfig):
        self.config = config
        self.model_dir = resolve_model(config.model)
        """The starting model's directory: what LoRA adapters merge into."""
        self.model, self.tokenizer = load_model(
            config.model, dtype=config.dtype, threads=config.threads, device=config.device
        )
        self.tokenizer.padding_side = "left"
        self.eos_ids = _eos_ids(self.model, self.tokenizer)

    @torch.inference_mode()
    def generate(
        self, prompts: Sequence[Sequence[int]], settings: SamplingSettings, seeds: Sequence[int]
    ) -> list[list[Sampled]]:
        # One seeded batch: transformers has no per-request generators, so
        # samples depend on the batch (vLLM's do not).
        torch.manual_seed(seeds[0] if seeds else settings.seed)
        batch = self.tokenizer.pad({"input_ids": [list(p) for p in prompts]}, return_tensors="pt")
        batch = {k: v.to(self.model.device) for k, v in batch.items()}
        greedy = settings.temperature == 0
        out = self.model.generate(
            **batch,
            do_sample=not greedy,
            temperature=None if greedy else settings.temperature,
            top_p=None if greedy else settings.top_p,
            top_k=None,
            max_new_tokens=settings.max_new_tokens,
            num_return_sequences=settings.n,
            output_logits=True,
            return_dict_in_generate=True,
            eos_token_id=self.eos_ids,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        new_tokens = out.sequences[:, batch["input_ids"].shape[1] :]  # (B*n, T)
        logits = torch.stack(out.logits, dim=1).float()  # (B*n, T, V)
        logprobs = torch.log_softmax(logits, dim=-1).gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)
        samples = [self._trim(new_tokens[i], logprobs[i], settings) for i in range(new_tokens.shape[0])]
        return [samples[i * settings.n : (i + 1) * settings.n] for i in range(len(prompts))]

    def _trim(self, tokens: torch.Tensor, logprobs: torch.Tensor, settings: SamplingSettings) -> Sampled:
        ids = tokens.tolist()
        end = next((i + 1 for i, t in enumerate(ids) if t in self.eos_ids), None)
        finish = "stop" if end is not None else "length"
        ids = ids[:end] if end is not None else ids
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        for stop in settings.stop:
            if stop in text:
                text, finish = text.split(stop, 1)[0], "stop"
        return Sampled(tuple(ids), tuple(logprobs[: len(ids)].tolist()), text, finish)

    def load_weights(self, state: Mapping) -> None:
        missing, unexpected = self.model.load_state_dict(dict(state), strict=False)
        if unexpected or [m for m in missing if "lm_head" not in m]:
            raise ValueError(f"weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")

    def join_weight_group(self, address: GroupAddress, rank_offset: int) -> None:
        self.group = join_group(address, rank_offset)
        self.group_device = self.model.device if address.backend == "nccl" else torch.device("cpu")

    @torch.no_grad()
    def receive_weights(self, buckets: Sequence[Bucket], lora: LoraSync | None = None) -> None:
        """Copy each received tensor (``lora``: each merged layer) into the parameter of its name."""
        params = self.model.state_dict(keep_vars=True)
        weights = received(self.group, buckets, self.group_device, lora, self.model_dir)
        try:
            for name, tensor in weights:
                if name not in params:
                    raise ValueError(f"weights do not fit the model: no tensor named {name}")
                params[name].copy_(tensor)
        finally:
            weights.close()


def _eos_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids
