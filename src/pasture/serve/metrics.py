"""Prometheus text exposition (version 0.0.4) of the server's counters, gauges and latency
histograms; no client library needed for a handful of series."""

from __future__ import annotations

import bisect
import threading

from ..generate.engine import Engine, Request

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Histogram:
    def __init__(self, name: str, help_text: str) -> None:
        self.name, self.help = name, help_text
        self.counts = [0] * (len(BUCKETS) + 1)  # the last: above every bucket
        self.sum, self.count = 0.0, 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        total = 0
        for bound, n in zip(BUCKETS, self.counts, strict=False):
            total += n
            out.append(f'{self.name}_bucket{{le="{bound}"}} {total}')
        out.append(f'{self.name}_bucket{{le="+Inf"}} {self.count}')
        out += [f"{self.name}_sum {self.sum}", f"{self.name}_count {self.count}"]
        return out


class Metrics:
    """Requests by endpoint and outcome, refused requests by status, tokens, queue length,
    running requests, and per-request latencies (queue wait, time to first token, total)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, str], int] = {}
        self.refused: dict[int, int] = {}
        self.ttft = Histogram(
            "pasture_time_to_first_token_seconds", "Submission to the first generated token."
        )
        self.e2e = Histogram(
            "pasture_request_duration_seconds", "Submission to the last token (or cancellation)."
        )

    def refuse(self, status: int) -> None:
        with self.lock:
            self.refused[status] = self.refused.get(status, 0) + 1

    def finished(self, request: Request) -> None:
        """The engine's ``on_finish`` (its thread)."""
        with self.lock:
            key = (request.label, request.finish_reason or "unknown")
            self.requests[key] = self.requests.get(key, 0) + 1
            if request.first_token_at is not None:
                self.ttft.observe(request.first_token_at - request.submitted)
            if request.finished_at is not None:
                self.e2e.observe(request.finished_at - request.submitted)

    def render(self, engine: Engine) -> str:
        with self.lock:
            lines = [
                "# HELP pasture_requests_total Requests that ended, by endpoint and finish reason.",
                "# TYPE pasture_requests_total counter",
            ]
            for (endpoint, reason), n in sorted(self.requests.items()):
                lines.append(
                    f'pasture_requests_total{{endpoint="{endpoint}",finish_reason="{reason}"}} {n}'
                )
            lines += [
                "# HELP pasture_refused_requests_total Requests refused, by HTTP status.",
                "# TYPE pasture_refused_requests_total counter",
            ]
            for status, n in sorted(self.refused.items()):
                lines.append(f'pasture_refused_requests_total{{status="{status}"}} {n}')
            stats = engine.stats
            lines += [
                "# HELP pasture_prompt_tokens_total Prompt tokens prefilled.",
                "# TYPE pasture_prompt_tokens_total counter",
                f"pasture_prompt_tokens_total {stats['prompt_tokens']}",
                "# HELP pasture_generation_tokens_total Tokens generated.",
                "# TYPE pasture_generation_tokens_total counter",
                f"pasture_generation_tokens_total {stats['completion_tokens']}",
                "# HELP pasture_decode_steps_total Batched decode steps run.",
                "# TYPE pasture_decode_steps_total counter",
                f"pasture_decode_steps_total {stats['decode_steps']}",
                "# HELP pasture_queue_length Requests waiting for a batch row.",
                "# TYPE pasture_queue_length gauge",
                f"pasture_queue_length {engine.waiting}",
                "# HELP pasture_running_requests Requests in the running batch.",
                "# TYPE pasture_running_requests gauge",
                f"pasture_running_requests {engine.running}",
                "# HELP pasture_batch_rows Rows of the static KV cache (the largest batch).",
                "# TYPE pasture_batch_rows gauge",
                f"pasture_batch_rows {engine.max_batch}",
            ]
            lines += self.ttft.lines() + self.e2e.lines()
        return "\n".join(lines) + "\n"
