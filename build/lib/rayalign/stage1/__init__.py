"""Stage 1: prompts -> spec-conditioned samples -> judge filter -> SFT data.

``prompts`` reads and splits prompt sets and renders generation prompts;
``categories`` asks the judge for a category where a prompt has none;
``filter`` (pure) turns judged samples into SFT examples with the spec removed;
``generate`` is the driver that runs them on Ray.
"""
