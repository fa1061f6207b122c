"""The training plumbing every model family shares, one room per job: checkpoints that survive (``checkpointing``),
how a run stops (``stopping``), runs you can find and continue (``runs``), precision, optimisers and schedules,
random streams, ``compile`` and memory layouts, quiet logs, the allocator. No model family is defined here."""
