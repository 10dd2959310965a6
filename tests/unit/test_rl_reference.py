"""The reference scored off the learners gives the learner's own numbers."""

import random

import pytest
import torch

from rayalign.models import cpu_has_native_bf16, resolve_model
from rayalign.rl.batch import pad_experiences, reference_logprobs, shard
from rayalign.rl.learn import reference_for
from rayalign.rl.reference import ReferenceScorer, load_reference, with_reference
from rayalign.types import Experience


def _experiences(n: int, vocab: int) -> list[Experience]:
    rng = random.Random(0)
    out = []
    for i in range(n):
        prompt = tuple(rng.randrange(3, vocab) for _ in range(rng.randint(3, 9)))
        tokens = tuple(rng.randrange(3, vocab) for _ in range(rng.randint(1, 12)))
        out.append(Experience(f"p{i}", prompt, tokens, tuple(-1.0 for _ in tokens), 0.5, 1.0 if i % 3 else None))
    return out


@pytest.fixture(scope="module")
def scorer(tiny_model):
    return ReferenceScorer(str(resolve_model(tiny_model)), micro_batch_size=4, pad_id=0, threads=1)


def _learner_refs(model, experiences, micro: int, rank: int = 0, world: int = 1) -> list[list[float]]:
    """What a learner computes: its shard, in micro-batches, its own reference forward."""
    mine = shard(experiences, rank, world)
    refs = []
    for i in range(0, len(mine), micro):
        chunk = mine[i : i + micro]
        logp = reference_logprobs(model, pad_experiences(chunk, 0), "cpu")
        refs += [logp[j, : len(e.token_ids)].tolist() for j, e in enumerate(chunk)]
    return refs


def test_the_scorer_equals_the_learners_reference_forward(scorer, tiny_model):
    model = load_reference(str(resolve_model(tiny_model)), "cpu")
    experiences = _experiences(12, model.config.vocab_size)
    scores = scorer.score(experiences)
    assert [len(s) for s in scores] == [len(e.token_ids) for e in experiences]
    # One learner, the same micro-batches: the very same numbers.
    assert [list(s) for s in scores] == _learner_refs(model, experiences, micro=4)
    # Two learners, other micro-batches (other padding): equal to 1e-5.
    by_id = {e.prompt_id: s for e, s in zip(experiences, scores)}
    for rank in (0, 1):
        mine = shard(experiences, rank, 2)
        for e, ref in zip(mine, _learner_refs(model, experiences, micro=2, rank=rank, world=2)):
            assert torch.allclose(torch.tensor(by_id[e.prompt_id]), torch.tensor(ref), atol=1e-5, rtol=0)


def test_a_scorer_with_the_head_in_chunks_gives_the_same_scores(scorer, tiny_model):
    chunked = ReferenceScorer(str(resolve_model(tiny_model)), micro_batch_size=4, pad_id=0, threads=1, logprob_chunk=5)
    experiences = _experiences(8, chunked.model.config.vocab_size)
    for got, want in zip(chunked.score(experiences), scorer.score(experiences)):
        assert torch.allclose(torch.tensor(got), torch.tensor(want), atol=1e-5, rtol=0)


def test_a_batch_with_scores_skips_the_learners_reference(scorer):
    experiences = _experiences(4, 100)
    scored = with_reference(experiences, scorer.score(experiences))
    batch = pad_experiences(scored, 0)
    assert batch.ref_logprobs.shape == batch.completion_ids.shape
    assert reference_for(None, batch, "cpu", job=None) is not None  # no reference model needed
    assert batch.ref_logprobs[0, : len(scored[0].token_ids)].tolist() == list(scored[0].ref_logprobs)
    with pytest.raises(RuntimeError, match="holds no reference"):
        reference_for(None, pad_experiences(experiences, 0), "cpu", job=None)
    with pytest.raises(ValueError, match="some experiences have reference log-probs"):
        pad_experiences([scored[0], experiences[1]], 0)
    with pytest.raises(ValueError, match="2 reference scores for 4"):
        with_reference(experiences, [(), ()])


def test_bf16_scoring_runs_under_cpu_autocast_as_the_learner_does(tiny_model):
    """model.dtype: bfloat16 on CPU: the scorer and the learner's reference forward both run under bfloat16
    autocast over float32 weights, so they agree exactly, and stay near the float32 numbers."""
    path = str(resolve_model(tiny_model))
    scorer = ReferenceScorer(path, micro_batch_size=4, pad_id=0, threads=1, dtype="bfloat16")
    model = load_reference(path, "cpu")
    experiences = _experiences(8, model.config.vocab_size)
    scores = scorer.score(experiences)
    assert next(scorer.model.parameters()).dtype == torch.float32  # autocast, not bf16 weights
    learner = []
    for i in range(0, 8, 4):
        chunk = experiences[i : i + 4]
        logp = reference_logprobs(model, pad_experiences(chunk, 0), "cpu", bf16=True)
        learner += [logp[j, : len(e.token_ids)].tolist() for j, e in enumerate(chunk)]
    assert [list(s) for s in scores] == learner
    fp32 = torch.tensor([x for refs in _learner_refs(model, experiences, micro=4) for x in refs])
    bf16 = torch.tensor([x for s in scores for x in s])
    assert not torch.equal(bf16, fp32)  # autocast changed the arithmetic
    assert torch.allclose(bf16, fp32, atol=0.1, rtol=0)


def test_auto_precision_follows_the_cpu_the_scorer_runs_on(tiny_model):
    """model.dtype: auto on CPU: the scorer autocasts where its node's CPU has native bf16, as the learners do."""
    scorer = ReferenceScorer(str(resolve_model(tiny_model)), micro_batch_size=4, pad_id=0, threads=1, dtype="auto")
    assert scorer.bf16 == cpu_has_native_bf16()
    float32 = ReferenceScorer(str(resolve_model(tiny_model)), micro_batch_size=4, pad_id=0, threads=1)
    assert not float32.bf16
