"""``rayalign probe``: does the training data teach the policy the distinction the eval asks for?

    training prompts (stage 1's: data.prompts, max_prompts, weights; refuse vs comply) ─┐
    eval prompts (benchmarks; refuse vs comply) ────────────────────────────────────────┴─> the model's forward pass:
        hidden states of every layer for the prompt as the sampler renders it, pooled two ways
        (the last prompt token, where the answer starts; the mean over the prompt)
    per (layer, pooling):
        probe fitted on the training prompts -> its Separation on the eval prompts ("transfer")
        probe fitted on the eval prompts' other folds -> Separation ("within": what the features hold)
    -> probe.json, probe.md

Minutes on a CPU, against the hour a stage 1 + SFT + eval takes: a linear probe
on the untrained model's features reading the eval's harmful and benign
prompts about as well as the trained models do says what limits them; the
"within" figures, far above the "transfer" ones, say the model can tell the
two apart and the training prompts do not show it how. Labels come from the
prompts' expected behaviour; safe-complete and unlabelled prompts are left out.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from rayalign.config import Config
from rayalign.datafiles import write_atomic
from rayalign.errors import ConfigError
from rayalign.eval.selection import load_eval_prompts
from rayalign.eval.separability import Separation, cross_scores, fit_probe, separation
from rayalign.head import no_logits
from rayalign.models import chat_prompt, load_model
from rayalign.spec import load_spec
from rayalign.stage1.prompts import training_prompts
from rayalign.types import Prompt

POOLS = ("last", "mean")
LABELS = {"refuse": 1.0, "comply": 0.0}


@dataclass(frozen=True)
class ProbeRow:
    """One layer and pooling: the probe read on the eval prompts."""

    layer: int
    """0 = the embeddings, L = the last decoder layer's output."""
    pool: str
    transfer: Separation
    """Fitted on the training prompts."""
    within: Separation
    """Fitted on the eval prompts' other folds (twins kept in one fold)."""


@dataclass(frozen=True)
class ProbeResult:
    model: str
    train_prompts: int
    eval_prompts: int
    benchmarks: tuple[str, ...]
    folds: int
    l2: float
    seconds: float
    rows: tuple[ProbeRow, ...]


def labelled(prompts: Sequence[Prompt]) -> tuple[list[Prompt], torch.Tensor]:
    """The refuse- and comply-labelled prompts and their labels (1 = refuse)."""
    kept = [p for p in prompts if p.expected in LABELS]
    return kept, torch.tensor([LABELS[p.expected] for p in kept])


def twin_group(prompt_id: str) -> str:
    """Benchmarks that pair a harmful and a benign prompt number them alike (jbb_harmful/5, jbb_benign/5)."""
    return prompt_id.rsplit("/", 1)[-1]


@torch.no_grad()
def prompt_features(model, tokenizer, prompts: Sequence[Prompt], batch_size: int = 16) -> torch.Tensor:
    """(N, layers + 1, 2, H) float32: per layer, the last prompt token's and the prompt's mean hidden state.

    Right-padded batches under an attention mask (a causal model's states at real tokens do not see the
    padding); no logits are computed (a 262k-token vocabulary would dwarf the states)."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(prompts), batch_size):
        texts = [chat_prompt(tokenizer, p.messages) for p in prompts[start : start + batch_size]]
        batch = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        width = max(map(len, batch))
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for i, row in enumerate(batch):
            ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
        hidden = model(
            input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True, **no_logits(device)
        )
        states = torch.stack(hidden.hidden_states, 1).float().cpu()  # (B, layers + 1, T, H)
        last = mask.sum(1) - 1
        m = mask[:, None, :, None].float()
        pooled_last = states[torch.arange(len(batch)), :, last]  # (B, layers + 1, H)
        pooled_mean = (states * m).sum(2) / m.sum(2)
        out.append(torch.stack([pooled_last, pooled_mean], 2))
    return torch.cat(out)


def probe_rows(
    train: torch.Tensor, y_train: torch.Tensor, held: torch.Tensor, y_held: torch.Tensor, groups, folds: int, l2: float
) -> list[ProbeRow]:
    """A ProbeRow per layer and pooling; features (N, layers + 1, 2, H)."""
    rows = []
    for layer in range(train.shape[1]):
        for k, pool in enumerate(POOLS):
            x, z = train[:, layer, k], held[:, layer, k]
            transfer = separation(fit_probe(x, y_train, l2)(z), y_held)
            within = separation(cross_scores(z, y_held, groups, folds, l2), y_held)
            rows.append(ProbeRow(layer, pool, transfer, within))
    return rows


def run_probe(
    cfg: Config,
    *,
    model: str | None = None,
    benchmarks: Sequence[str] = (),
    limit: int | None = None,
) -> ProbeResult:
    """The probe of ``model`` (default model.policy) on ``benchmarks`` (default eval.benchmarks); eval.probe."""
    folds, l2 = cfg.eval.probe.folds, cfg.eval.probe.l2
    start = time.perf_counter()
    train, y_train = labelled(training_prompts(cfg, load_spec(cfg.spec.path))[0])
    names, prompts = load_eval_prompts(
        list(benchmarks) or cfg.eval.benchmarks, cfg.eval.limit if limit is None else limit
    )
    held, y_held = labelled(prompts)
    for field, y in (("data.prompts", y_train), ("eval.benchmarks", y_held)):
        if not (y > 0).any() or not (y <= 0).any():
            raise ConfigError("a probe needs refuse- and comply-labelled prompts (expected)", field=field)
    source = model or cfg.model.policy
    device = "cuda" if torch.cuda.is_available() else "cpu"
    net, tokenizer = load_model(source, dtype=cfg.model.dtype, threads=cfg.model.threads, device=device)
    x_train, x_held = prompt_features(net, tokenizer, train), prompt_features(net, tokenizer, held)
    groups = [twin_group(p.id) for p in held]
    rows = probe_rows(x_train, y_train, x_held, y_held, groups, folds, l2)
    return ProbeResult(source, len(train), len(held), tuple(names), folds, l2, time.perf_counter() - start, tuple(rows))


def _cells(s: Separation) -> str:
    return f"{s.refused:.2f} | {s.answered:.2f} | {s.total:.2f} | {s.best:.2f} | {s.auc:.2f}"


def report_head(result: ProbeResult) -> list[str]:
    """Markdown lines above the table: what was fitted on what, and the rows worth reading first."""
    best_transfer = max(result.rows, key=lambda r: r.transfer.auc)
    best_within = max(result.rows, key=lambda r: r.within.auc)
    last = next(r for r in result.rows if r.layer == result.rows[-1].layer and r.pool == "last")
    return [
        f"# Linear probe: {result.model}",
        "",
        f"{result.train_prompts} training prompts (refuse vs comply) -> {result.eval_prompts} eval prompts "
        f"({', '.join(result.benchmarks)}); {result.folds}-fold within the eval prompts, L2 {result.l2}; "
        f"{result.seconds:.0f} s.",
        "",
        f"- The last layer's last token (where the answer starts; chosen before looking): transfer AUC "
        f"{last.transfer.auc:.2f}, refused + answered {last.transfer.total:.2f} (best threshold "
        f"{last.transfer.best:.2f}); within AUC {last.within.auc:.2f}, refused + answered {last.within.total:.2f}.",
        f"- Best transfer (probe fitted on the training prompts; the best of every row, chosen on the eval "
        f"prompts, so optimistic): layer {best_transfer.layer} "
        f"{best_transfer.pool}, AUC {best_transfer.transfer.auc:.2f}, refused + answered "
        f"{best_transfer.transfer.total:.2f} (best threshold {best_transfer.transfer.best:.2f}).",
        f"- Best within (fitted on the eval prompts' other folds): layer {best_within.layer} {best_within.pool}, "
        f"AUC {best_within.within.auc:.2f}, refused + answered {best_within.within.total:.2f}.",
    ]


def report(result: ProbeResult) -> str:
    """Markdown: the head (:func:`report_head`), then the table of every layer and pooling."""
    lines = [
        *report_head(result),
        "",
        "| layer | pool | refused | answered | sum | best sum | AUC | within: refused | answered | sum | best sum | AUC |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {r.layer} | {r.pool} | {_cells(r.transfer)} | {_cells(r.within)} |" for r in result.rows]
    return "\n".join(lines)


def write_probe(result: ProbeResult, out: str | Path) -> Path:
    out = Path(out)
    write_atomic(out / "probe.json", [json.dumps(asdict(result), indent=1)])
    write_atomic(out / "probe.md", [report(result)])
    return out
