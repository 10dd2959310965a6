"""Stage 2, RL: the policy samples, the judge scores the final answer (reasoning
hidden), and the policy is updated with group-relative policy gradients.

Pure tensor math, importable without Ray or transformers:

- :mod:`rayalign.rl.reward`: judge verdict -> scalar reward (unscorable -> None),
  and the judge requests RL sends (reasoning hidden).
- :mod:`rayalign.rl.advantage`: rewards of a prompt's group -> advantages (GRPO, RLOO).
- :mod:`rayalign.rl.loss`: PPO-style clipped policy loss with a k3 KL penalty.
- :mod:`rayalign.rl.batch`: experiences -> padded tensors; which prompts a step uses;
  the completion log-probs of a forward pass.

On Ray:

- :mod:`rayalign.rl.loop`: the per-worker Ray Train loop, one step = generate,
  reward, advantage, learn, sync, each timed, on the job, checkpoints and
  resume of :mod:`rayalign.training`.
- :mod:`rayalign.rl.job`: what every RL worker needs, built by the driver.
- :mod:`rayalign.rl.learn`: the learn phase on every learner rank: policy and
  reference models, micro-batches, the clipped-loss optimizer steps.
- :mod:`rayalign.rl.reference`: the frozen reference scoring completions on an
  actor of its own (``rl.reference.placement: engine``), off the learners.
- :mod:`rayalign.rl.train`: the driver (judge service, sampler pool, reference actor, trainer).
"""
