"""Next-token choice: greedy at temperature 0, else temperature, top-k and nucleus (top-p)."""

from __future__ import annotations

import numpy as np
import torch


def sample(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token per row of ``logits`` (B, vocab) → (B,)."""
    if temperature <= 0.0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (always at least the top token).
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class Llama2cSampler:
    """llama2.c's ``run.c`` sampler, bit for bit: xorshift64* RNG, float32 softmax, and its
    top-p rule (candidates at or above (1 - p) / (n - 1), sorted, cut after the cumulative
    mass first exceeds p). With the same seed and weights it picks the tokens ``./run`` picks.
    """

    MASK = (1 << 64) - 1

    def __init__(self, temperature: float, top_p: float, seed: int) -> None:
        self.temperature = np.float32(temperature)
        self.top_p = np.float32(top_p)
        self.state = seed & self.MASK

    def random_f32(self) -> np.float32:
        x = self.state
        x ^= x >> 12
        x ^= (x << 25) & self.MASK
        x ^= x >> 27
        self.state = x
        u32 = ((x * 0x2545F4914F6CDD1D) & self.MASK) >> 32
        return np.float32((u32 >> 8) / 16777216.0)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """One token per row of ``logits`` (B, vocab) → (B,)."""
        return torch.tensor([self._sample_row(row) for row in logits.float().cpu().numpy()])

    def _sample_row(self, logits: np.ndarray) -> int:
        if self.temperature == 0:
            return int(logits.argmax())
        logits = (logits / self.temperature).astype(np.float32)
        exp = np.exp(logits - logits.max(), dtype=np.float32)
        probs = exp / np.cumsum(exp, dtype=np.float32)[-1]  # run.c sums left to right
        coin = self.random_f32()
        if self.top_p <= 0 or self.top_p >= 1:
            cdf = np.cumsum(probs, dtype=np.float32)
            hits = np.nonzero(coin < cdf)[0]
            return int(hits[0]) if len(hits) else len(probs) - 1
        cutoff = np.float32((np.float32(1) - self.top_p) / np.float32(len(probs) - 1))
        candidates = np.nonzero(probs >= cutoff)[0]
        order = candidates[np.argsort(-probs[candidates], kind="stable")]
        cdf = np.cumsum(probs[order], dtype=np.float32)
        over = np.nonzero(cdf > self.top_p)[0]
        last = int(over[0]) if len(over) else len(order) - 1
        r = np.float32(coin * cdf[last])
        hits = np.nonzero(r < cdf[: last + 1])[0]
        return int(order[hits[0]] if len(hits) else order[last])
