"""Stage-1 supervised fine-tuning on Ray Train.

- :mod:`rayalign.sft.data` (pure): SFT examples -> token ids with a loss mask
  on the completion only -> packed rows -> batches; which rows each worker
  trains on at each step; the learning-rate schedule.
- :mod:`rayalign.sft.loop`: the per-worker training step and loop (DeepSpeed
  ZeRO or DDP), on the job, checkpoints and resume of :mod:`rayalign.training`.
- :mod:`rayalign.sft.train`: the driver, ``run_sft(cfg, examples, output_dir)``.
"""
