"""Training: the loop, AdamW with warmup and cosine decay, checkpoints, metrics (§2.3–2.4)."""
