"""The language-model head and its cross-entropy in chunks of rows, gradients computed on the way.

A model's logits are rows x vocabulary: at Gemma's 262,144-token vocabulary,
4 sequences of 768 tokens make 805M of them, 3.2 GB in float32 per copy, and
the loss keeps several copies (the head's output, its float32 cast, the
softmax, their gradients). :func:`head_loss_sum` never holds more than
``chunk`` rows of them: for each chunk it computes the logits, the summed
cross-entropy, and, right there, the gradients of that sum with respect to the
hidden states and the head's weight (softmax minus one-hot, times the other
factor), which backward then only scales. Nothing is recomputed, so it costs
the head's forward and backward once, as the unchunked loss does.

Matmuls run in the autocast dtype when autocast is on (as the head would), the
softmax in float32; the weight's gradient accumulates in float32.
"""

from __future__ import annotations

import torch


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
