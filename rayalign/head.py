"""The language-model head in chunks of rows: SFT's summed cross-entropy and RL's token log-probs.

A model's logits are rows x vocabulary: at Gemma's 262,144-token vocabulary,
4 sequences of 768 tokens make 805M of them, 3.2 GB in float32 per copy, and
a loss keeps several copies (the head's output, its float32 cast, the
softmax, their gradients). Both functions here never hold more than ``chunk``
rows of them.

:func:`head_loss_sum` (SFT): for each chunk the logits, the summed
cross-entropy, and, right there, the gradients of that sum with respect to the
hidden states and the head's weight (softmax minus one-hot, times the other
factor), which backward then only scales. Nothing is recomputed, so it costs
the head's forward and backward once, as the unchunked loss does.

:func:`head_token_logprobs` (RL): each row's log-prob of its token and its
entropy. Its upstream gradient differs per row (the PPO loss weighs every
token), so backward recomputes each chunk's logits from the saved hidden
states and the per-row log-normaliser: one extra head matmul.

Matmuls run in the autocast dtype when autocast is on (as the head would), the
softmax in float32; the weight's gradient accumulates in float32.
"""

from __future__ import annotations

import torch

from rayalign.errors import ConfigError


def head_loss_sum(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk: int) -> torch.Tensor:
    """Summed cross-entropy of ``hidden @ weight.T`` (rows x vocabulary logits) against ``labels``.

    ``hidden`` (N, H) are the rows whose next token is scored, ``weight`` (V, H) the head's (no bias),
    ``labels`` (N,) the token each row predicts. Differentiable in ``hidden`` and ``weight``; equal to
    ``cross_entropy(hidden @ weight.T, labels, reduction="sum")``.

    >>> h, w = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    >>> # logits [1, 0, 0] and [0, 2, 0]: (log(e + 2) - 1) + (log(2 + e^2) - 2) = 0.5514 + 0.2395
    >>> round(float(head_loss_sum(h, w, torch.tensor([0, 1]), chunk=1)), 4)
    0.791
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    return _HeadCrossEntropy.apply(hidden, weight, labels, chunk)


def _compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    device = tensor.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return tensor.dtype


class _HeadCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk):
        dtype = _compute_dtype(hidden)
        w = weight.to(dtype)
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if want_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            h, y = hidden[start : start + chunk].to(dtype), labels[start : start + chunk]
            logits = (h @ w.T).float()  # (C, V)
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, y[:, None]).squeeze(1)).sum()
            if not (want_h or want_w):
                continue
            probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
            probs[torch.arange(len(y), device=y.device), y] -= 1.0  # d(sum CE)/d(logits)
            g = probs.to(dtype)
            if want_h:
                grad_h[start : start + chunk] = (g @ w).to(hidden.dtype)
            if want_w:
                grad_w.add_(g.T @ h)  # (V, H) in the compute dtype, accumulated in float32
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_h, grad_w = ctx.saved_tensors
        # In place: the stored gradients are used once, and a (V, H) copy is what chunking saves memory for.
        dh = grad_h.mul_(grad_total.to(grad_h.dtype)) if grad_h is not None else None
        dw = grad_w.mul_(grad_total).to(ctx.weight_dtype) if grad_w is not None else None
        return dh, dw, None, None


def head_token_logprobs(
    hidden: torch.Tensor, weight: torch.Tensor, tokens: torch.Tensor, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's log-prob of its token under ``hidden @ weight.T``, and the row's entropy (nats).

    ``hidden`` (N, H), ``weight`` (V, H) the head's (no bias), ``tokens`` (N,). Returns two (N,) float32
    tensors: the log-probs, differentiable in ``hidden`` and ``weight``; the entropies, without gradient.
    Equal to ``log_softmax(hidden @ weight.T).gather(tokens)`` and ``-(p * log p).sum(-1)``.

    >>> h, w = torch.tensor([[0.0, 0.0], [1.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> # logits [0, 0] and [1, 0]: log 1/2 and log e/(e + 1); entropies log 2 and 0.5822
    >>> logp, entropy = head_token_logprobs(h, w, torch.tensor([1, 0]), chunk=1)
    >>> [round(v, 4) for v in logp.tolist()], [round(v, 4) for v in entropy.tolist()]
    ([-0.6931, -0.3133], [0.6931, 0.5822])
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    return _HeadTokenLogprobs.apply(hidden, weight, tokens, chunk)


class _HeadTokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, tokens, chunk):
        dtype = _compute_dtype(hidden)
        w = weight.to(dtype)
        n = hidden.shape[0]
        logp = torch.empty(n, dtype=torch.float32, device=hidden.device)
        lse = torch.empty(n, dtype=torch.float32, device=hidden.device)
        entropy = torch.empty(n, dtype=torch.float32, device=hidden.device)
        for start in range(0, n, chunk):
            rows = slice(start, start + chunk)
            logits = (hidden[rows].to(dtype) @ w.T).float()  # (C, V)
            lse[rows] = torch.logsumexp(logits, dim=-1)
            logp[rows] = logits.gather(1, tokens[rows, None]).squeeze(1) - lse[rows]
            expected = (logits.sub(lse[rows, None]).exp_() * logits).sum(-1)  # E_p[logit]
            entropy[rows] = lse[rows] - expected
        ctx.save_for_backward(hidden, weight, tokens, lse)
        ctx.chunk, ctx.dtype = chunk, dtype
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, _grad_entropy):
        hidden, weight, tokens, lse = ctx.saved_tensors
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        w = weight.to(ctx.dtype)
        dh = torch.empty_like(hidden) if want_h else None
        dw = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
        for start in range(0, hidden.shape[0], ctx.chunk):
            rows = slice(start, start + ctx.chunk)
            h, y, g = hidden[rows].to(ctx.dtype), tokens[rows], grad_logp[rows].float()
            probs = (h @ w.T).float().sub_(lse[rows, None]).exp_()  # (C, V) softmax, recomputed
            probs.mul_(-g[:, None])  # d(g . log p_y)/d(logits) = g (one-hot - softmax)
            probs[torch.arange(len(y), device=y.device), y] += g
            d = probs.to(ctx.dtype)
            if want_h:
                dh[rows] = (d @ w).to(hidden.dtype)
            if want_w:
                dw.add_(d.T @ h)
        return dh, dw.to(weight.dtype) if want_w else None, None, None


def decoder_output(model, forward) -> torch.Tensor:
    """The decoder's hidden states (B, S, H) during ``forward()``, a call of ``model`` that asks for the
    logits of no position: it still goes through ``model`` (DDP and DeepSpeed prepare their gradient
    hooks there); a hook takes the decoder's output on the way."""
    captured: list[torch.Tensor] = []
    hook = _base(model).get_decoder().register_forward_hook(lambda _module, _args, out: captured.append(out[0]))
    try:
        forward()
    finally:
        hook.remove()
    return captured[0]


def no_logits(device) -> dict:
    """The forward keyword that asks a Hugging Face causal LM for the logits of no position."""
    return {"logits_to_keep": torch.zeros(0, dtype=torch.long, device=device)}


def output_head(model) -> torch.nn.Module:
    """The output head (its ``weight`` is (V, H)) of a Hugging Face causal LM, through DDP, DeepSpeed and
    LoRA wrappers."""
    return _base(model).get_output_embeddings()


def check_plain_head(model, field: str) -> None:
    """Raises :class:`ConfigError` naming ``field`` (the config key that chunks the head) for a model whose
    logits are more than ``hidden @ head.weight.T`` (a bias, soft-capping, scaling): chunking would
    change its numbers."""
    base = _base(model)
    config = base.config.get_text_config()
    extra = [k for k in ("final_logit_softcapping", "logit_scale") if getattr(config, k, None)]
    if getattr(config, "logits_scaling", None) not in (None, 1.0):
        extra.append("logits_scaling")
    if getattr(output_head(base), "bias", None) is not None:
        extra.append("head bias")
    if extra:
        raise ConfigError(
            f"{type(base).__name__} computes its logits with more than the head's weight ({', '.join(extra)}); "
            f"set {field}: 0",
            field=field,
        )


def _base(model):
    """The Hugging Face model inside DDP / DeepSpeed (``.module``) and LoRA (``get_base_model``) wrappers."""
    inner = getattr(model, "module", model)
    return inner.get_base_model() if hasattr(inner, "get_base_model") else inner
