"""What every RL worker needs, built once by the driver (rayalign.rl.train) and shipped to the
Ray Train workers: the loop (rayalign.rl.loop) and the learn phase (rayalign.rl.learn) read it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from rayalign.training import TrainingJob


@dataclass(frozen=True)
class RLJob(TrainingJob):
    """What every worker needs, built once by the driver. ``model_path`` is the
    starting policy and the frozen KL reference; ``fingerprint`` hashes the prompt ids."""

    stage: ClassVar[str] = "rl"
    data_name: ClassVar[str] = "prompts"
    data_keys: ClassVar[str] = "the same data.prompts"

    prompts: Any
    """ObjectRef to the training prompts (list[Prompt])."""
    pool: Any
    """The RolloutPool of sampler actors (used by rank 0)."""
    reference: Any = None
    """The ReferenceScorer actor (rl.reference.placement: engine; used by rank 0); None: each learner scores."""
