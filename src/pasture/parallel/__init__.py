"""Parallelism applied from outside the single-device model: meshes, FSDP2, TP, checkpointing."""
