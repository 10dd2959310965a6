"""Model sources resolve offline; the tiny and the real small model generate."""

import time

import pytest
import torch

from rayalign.errors import ModelLoadError
from rayalign.models import SMOLLM2, chat_prompt, load_model, resolve_model


def _greedy_reply(model, tokenizer, text: str, max_new_tokens: int) -> str:
    prompt = chat_prompt(tokenizer, [{"role": "user", "content": text}])
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def test_tiny_model_builds_offline_and_generates(tiny_model):
    model, tokenizer = load_model(tiny_model, threads=1)
    assert 100_000 < sum(p.numel() for p in model.parameters()) < 1_000_000
    prompt = chat_prompt(tokenizer, [{"role": "user", "content": "hi"}])
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.eos_token == "<|im_end|>"
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 5


def test_tiny_model_is_deterministic(tiny_model):
    first = resolve_model(tiny_model)
    assert resolve_model(tiny_model) == first  # cached, not rebuilt


def test_missing_local_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="model path not found"):
        resolve_model(str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        resolve_model(str(tmp_path / "m.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))
    with pytest.raises(ModelLoadError, match="unknown builtin model"):
        resolve_model("builtin:gpt-17")


def test_hub_id_offline_fails_fast_without_hanging():
    start = time.perf_counter()
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE=1"):
        resolve_model("rayalign-test/does-not-exist")
    assert time.perf_counter() - start < 30


@pytest.mark.slow
def test_real_small_model_answers_a_chat_message():
    model, tokenizer = load_model(SMOLLM2, threads=2)
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    reply = _greedy_reply(model, tokenizer, "What is the capital of France?", max_new_tokens=24)
    assert "Paris" in reply
