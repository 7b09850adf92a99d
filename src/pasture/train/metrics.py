"""What a run reports while it trains: ``RUN/metrics.jsonl`` (one line per logged step),
``RUN/tensorboard/`` (the same scalars), ``RUN/benchmarks.jsonl``; tokens/s and MFU.

MFU is model FLOPs per token (``pasture.model.flops_per_token``: 6N plus attention) × tokens/s
over the peak of every rank: ``metrics.peak_tflops`` if set, else the device's dense bf16 peak
from ``PEAK_BF16`` when its name is listed there (null otherwise).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import PastureError

# Dense bf16 peak FLOP/s per device, for MFU when metrics.peak_tflops is not set.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}


@dataclass
class MetricsConfig:
    """``[metrics]`` of a training config."""

    log_every: int = 10  # steps between lines of metrics.jsonl (and after the last step)
    tensorboard: bool = True  # RUN/tensorboard/: the metrics.jsonl scalars (pasture[train])
    peak_tflops: float = 0.0  # per device, for MFU; 0: the device's bf16 dense peak if known

    def __post_init__(self) -> None:
        if self.log_every < 1:
            raise PastureError(f"metrics.log_every = {self.log_every}: must be 1 or more")
        if not (math.isfinite(self.peak_tflops) and self.peak_tflops >= 0):
            raise PastureError(
                f"metrics.peak_tflops = {self.peak_tflops!r}: must be a finite number 0 or more"
            )

    def check(self) -> None:
        """Before any work: TensorBoard needs its package."""
        if not self.tensorboard:
            return
        try:
            import tensorboard  # noqa: F401  (what torch.utils.tensorboard needs)
        except ImportError:
            raise PastureError(
                "metrics.tensorboard = true needs the tensorboard package: "
                "pip install 'pasture[train]', or set metrics.tensorboard = false"
            ) from None


def peak_flops(device: torch.device, configured_tflops: float) -> float | None:
    """Peak FLOP/s of one ``device`` (None: unknown)."""
    if configured_tflops > 0:
        return configured_tflops * 1e12
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in PEAK_BF16.items():
            if key in name:
                return flops
    return None


class Metrics:
    """The logged scalars of one session. Every rank counts; rank 0 alone writes. Tokens/s is
    over the window since the previous logged step."""

    def __init__(
        self,
        run_dir: Path,
        cfg: MetricsConfig,
        *,
        rank: int,
        start: int,
        world: int,
        device: torch.device,
        flops_per_token: float,
    ) -> None:
        self.run_dir, self.cfg, self.rank, self.device = run_dir, cfg, rank, device
        self.path = run_dir / "metrics.jsonl"
        peak = peak_flops(device, cfg.peak_tflops)
        self.peak_total = None if peak is None else peak * world
        self.flops_per_token = flops_per_token
        self.writer = None
        if cfg.tensorboard and rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            # Events after ``start`` from an earlier session (killed past its last checkpoint)
            # are dropped, as later lines win in metrics.jsonl.
            self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start + 1)
        self.window_tokens, self.window_start = 0, time.perf_counter()

    def due(self, done: int, steps: int) -> bool:
        return done % self.cfg.log_every == 0 or done == steps

    def count(self, tokens: int) -> None:
        self.window_tokens += tokens

    def record(self, done: int, tokens: int, **scalars: float | None) -> dict[str, Any]:
        """The line of step ``done``: ``scalars`` (loss, lr, …) then throughput and memory."""
        tokens_per_s = self.window_tokens / (time.perf_counter() - self.window_start)
        cuda = self.device.type == "cuda"
        return {
            "step": done,
            **scalars,
            "tokens": tokens,
            "tokens_per_s": tokens_per_s,
            "mfu": None
            if self.peak_total is None
            else self.flops_per_token * tokens_per_s / self.peak_total,
            "val_loss": None,
            "memory_gb": torch.cuda.max_memory_allocated(self.device) / 1e9 if cuda else None,
        }

    def write(self, line: dict[str, Any]) -> None:
        """Append ``line`` (rank 0) and start the next throughput window."""
        if self.rank == 0:
            with self.path.open("a") as f:
                f.write(json.dumps(line) + "\n")
            self._scalars({k: v for k, v in line.items() if k != "step"}, line["step"])
        self.window_tokens, self.window_start = 0, time.perf_counter()

    def write_benchmarks(self, rows: list[dict[str, Any]], step: int) -> None:
        if self.rank == 0:
            with (self.run_dir / "benchmarks.jsonl").open("a") as f:
                f.writelines(json.dumps(row) + "\n" for row in rows)
            self._scalars({f"benchmarks/{row['task']}": row["value"] for row in rows}, step)

    def _scalars(self, values: dict[str, float | None], step: int) -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            if value is not None:
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
