"""Eval answers saved by one run serve another: judging a run's answers again samples nothing."""

from __future__ import annotations

import json

from rayalign.config import load_config
from rayalign.eval.sampling import EvalContext, _first_saved, sample_target, sampling_fingerprint
from rayalign.eval.targets import EvalTarget
from rayalign.rollout.engine import sampling_settings
from rayalign.spec import load_spec
from rayalign.stage1.conditioning import load_generation_templates
from rayalign.types import Message, Prompt, Rollout, to_dict

PROMPTS = [Prompt(f"p{i}", (Message("user", f"question {i}"),), "privacy", "comply") for i in range(2)]
TEXTS = ["<think>allowed</think>An answer.", "I'm sorry, but I can't help with that."]


def _context(repo, out, log, reuse=()):
    settings = sampling_settings(n=1, temperature=0.0, max_new_tokens=16, seed=0, enforce_format=False)
    spec, templates = load_spec(repo / "specs"), load_generation_templates(repo / "specs")
    return EvalContext(load_config(None), spec, templates, settings, None, out, None, log, reuse)


def _save(path, key):
    rollouts = [Rollout(p.id, 0, t, (1, 2), (3, 4), (-0.5, -0.5), "stop") for p, t in zip(PROMPTS, TEXTS)]
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"fingerprint": key, "rollouts": [to_dict(r) for r in rollouts]}))


def test_answers_saved_in_the_runs_eval_folder_serve_an_eval_into_another(repo, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    target = EvalTarget("sft", str(model))
    logs: list[str] = []
    ctx = _context(repo, tmp_path / "eval-judge", logs.append, reuse=(tmp_path / "eval" / "answers",))
    saved = tmp_path / "eval" / "answers" / "sft.rollouts.json"
    _save(saved, sampling_fingerprint(target, PROMPTS, ctx.settings, ctx.spec.hash))

    sampled = sample_target(ctx, target, PROMPTS)  # no sampler: nothing here could start one

    assert [r.text for r in sampled.rollouts] == TEXTS and sampled.generate_s == 0.0
    assert [c.answer for c in sampled.completions] == ["An answer.", TEXTS[1]]
    assert logs == [f"[eval] sft: 2 answers reused from {saved}"]
    copy = tmp_path / "eval-judge" / "answers" / "sft.rollouts.json"
    assert json.loads(copy.read_text()) == json.loads(saved.read_text())  # the new folder holds them too


def test_answers_saved_for_other_settings_do_not_serve(repo, tmp_path):
    target = EvalTarget("sft", str(tmp_path))
    ctx = _context(repo, tmp_path / "out", print)
    stale, fresh = tmp_path / "a" / "sft.rollouts.json", tmp_path / "b" / "sft.rollouts.json"
    key = sampling_fingerprint(target, PROMPTS, ctx.settings, ctx.spec.hash)
    _save(stale, key[::-1])
    _save(fresh, key)
    assert _first_saved([stale], key) == (None, None)
    assert _first_saved([tmp_path / "missing.json", stale, fresh], key)[0] == fresh
