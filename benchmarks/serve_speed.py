"""The server under bounded load on loopback: ``pasture serve`` vs llama-cpp-python's server on
the same weights, at 1/4/8/16 concurrent streaming clients, plus the same engine in-process.

    .venv/bin/python benchmarks/serve_speed.py                       # stories110M, 2 threads
    .venv/bin/python benchmarks/serve_speed.py --threads 2 --requests-per-client 2
    .venv/bin/python benchmarks/serve_speed.py --smoke --out /tmp/s.jsonl   # seconds, tiny

Random float32 weights in llama2.c's 110M shape with the LLaMA vocabulary (the real LLaMA
tokenizer from ``$PASTURE_DATA/models/llama-tokenizer`` when present, else a synthetic
SentencePiece vocabulary of the same size), written once as a GGUF F32 file by Pasture's
writer; both servers load that one file. BOS's and EOS's output rows are zero, far below the
largest of the other random logits, so a greedy request never stops early: every request
really generates ``--max-tokens`` tokens (each one is checked to end with finish_reason
"length").

Each server is the real command started as a subprocess on a free 127.0.0.1 port with the same
thread count (``pasture serve`` under OMP_NUM_THREADS, ``python -m llama_cpp.server
--n_threads``). Clients are asyncio coroutines speaking HTTP/1.1 over plain sockets to
``/v1/completions`` with ``stream: true``, temperature 0: at each concurrency level N, N clients
each send ``--requests-per-client`` requests one after another (closed loop, distinct prompts;
``--one-client-requests`` at N = 1). llama-cpp-python's server serves one request at a time, so
it is measured up to ``--llama-cpp-max-clients`` (8, the goal's level).
Per level: requests/s, aggregate completion tokens/s (tokens / wall from the first request to
the last answer), time to first token (the first SSE event with text) and end-to-end latency,
p50 and p99 (nearest rank: with few samples p99 is the slowest). The order of the two servers
alternates from level to level. The in-process baseline is the same engine (``Engine`` over
the model loaded from the same GGUF, ``pasture serve``'s defaults) driven by ``submit`` in this
process, one client: server overhead = server end-to-end p50 / in-process p50 - 1.

Traffic goes only to 127.0.0.1; every wait has a deadline. Writes one JSON line to
benchmarks/results/serve_speed.jsonl (or ``--out``). llama.cpp needs the benchmark extra
``pip install llama-cpp-python sse-starlette starlette-context pydantic-settings``; without it
Pasture alone is measured and the script says so.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch

import pasture
from pasture import interop
from pasture.data.tokenizer import Tokenizer
from pasture.generate.engine import Engine, SamplingParams
from pasture.interop import Checkpoint
from pasture.model import Transformer, preset

RESULTS = Path(__file__).parent / "results" / "serve_speed.jsonl"
HOST = "127.0.0.1"
START_DEADLINE_S = 300  # a server must answer its health check within this
PROMPT = "Request {k}: once upon a time, in a small village by the sea, there lived"
LLAMA_CPP_MODULES = ("llama_cpp", "sse_starlette", "starlette_context", "pydantic_settings")


def machine() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def synthetic_tokenizer(vocab_size: int) -> Tokenizer:
    """A valid LLaMA-style vocabulary (unk, bos, eos, 256 bytes, the rest normal pieces) that
    both servers accept; text falls back to byte pieces."""
    n_normal = vocab_size - 3 - 256
    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    pieces += [f"\u2581t{i}" for i in range(n_normal)]
    scores = [0.0] * 259 + [-float(i) for i in range(n_normal)]
    types = [2, 3, 3] + [6] * 256 + [1] * n_normal
    return Tokenizer.from_vocab(pieces, scores, types, source="synthetic")


def benchmark_tokenizer(vocab_size: int) -> tuple[Tokenizer, str]:
    data = os.environ.get("PASTURE_DATA")
    if data and vocab_size == 32000:
        path = Path(data) / "models" / "llama-tokenizer" / "tokenizer.model"
        if path.is_file():
            return Tokenizer.from_file(path), "LLaMA tokenizer.model"
    return synthetic_tokenizer(vocab_size), "synthetic SentencePiece vocabulary"


def write_model(size: str, smoke: bool, path: Path) -> dict:
    """Random weights that never choose BOS or EOS greedily, with a tokenizer, as GGUF F32."""
    args = preset(size, vocab_size=512) if smoke else preset(size)
    model = Transformer(args)
    model.init_weights(std=0.2 if smoke else 0.02, seed=0)
    tokenizer, tokenizer_name = benchmark_tokenizer(args.vocab_size)
    with torch.no_grad():
        model.output.weight[[tokenizer.bos_id, tokenizer.eos_id]] = 0.0
    interop.save(Checkpoint.from_model(model, tokenizer), path, "gguf", dtype="f32")
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "size": size,
        "params": n_params,
        "vocab_size": args.vocab_size,
        "max_seq_len": args.max_seq_len,
        "tokenizer": tokenizer_name,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass
class Server:
    name: str
    command: list[str]
    env: dict[str, str]
    health: str  # a GET path that answers 200 once the model is loaded
    extra_body: dict = field(default_factory=dict)  # request fields for this server only
    port: int = 0
    proc: subprocess.Popen | None = None
    log: Path | None = None

    def start(self, log_dir: Path) -> None:
        self.log = log_dir / f"{self.name}.log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                self.command,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self) -> float:
        start = time.monotonic()
        url = f"http://{HOST}:{self.port}{self.health}"
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited ({self.proc.returncode}):\n{self.tail()}")
            if time.monotonic() - start > START_DEADLINE_S:
                raise SystemExit(f"{self.name} not ready in {START_DEADLINE_S} s:\n{self.tail()}")
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status == 200:
                        return time.monotonic() - start
            except OSError:
                pass
            time.sleep(0.25)

    def tail(self) -> str:
        return self.log.read_text()[-3000:] if self.log and self.log.exists() else ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)


def pasture_server(gguf: Path, threads: int, max_batch: int) -> Server:
    script = Path(sys.executable).parent / "pasture"
    exe = [str(script)] if script.exists() else [sys.executable, "-m", "pasture.cli"]
    port = free_port()
    command = exe + [
        "serve",
        "--checkpoint",
        str(gguf),
        "--port",
        str(port),
        "--host",
        HOST,
        "--max-batch",
        str(max_batch),
        "--model-name",
        "bench",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return Server("pasture", command, env, "/health", port=port)


def llama_cpp_server(gguf: Path, threads: int, n_ctx: int) -> Server:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf),
        "--host",
        HOST,
        "--port",
        str(port),
        "--n_threads",
        str(threads),
        "--n_threads_batch",
        str(threads),
        "--n_ctx",
        str(n_ctx),
        "--model_alias",
        "bench",
        "--interrupt_requests",  # else each new request cuts the running stream short
        "False",
    ]
    # llama-cpp-python's completions default to repeat_penalty 1.1: 1.0 is plain greedy, as ours.
    return Server(
        "llama_cpp", command, dict(os.environ), "/v1/models", {"repeat_penalty": 1.0}, port=port
    )


@dataclass
class Sample:
    ttft: float
    e2e: float
    tokens: int
    text: str


async def stream_completion(port: int, body: dict, deadline_s: float) -> Sample:
    """POST /v1/completions with stream true over one HTTP/1.1 connection; parse the SSE
    events out of the (chunked or plain) body as they arrive."""
    payload = json.dumps(body).encode()
    start = time.perf_counter()
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), deadline_s)
    try:
        writer.write(
            f"POST /v1/completions HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            f"Content-Type: application/json\r\nAccept: text/event-stream\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
            + payload
        )
        await writer.drain()
        return await asyncio.wait_for(_read_events(reader, start, body["max_tokens"]), deadline_s)
    finally:
        writer.close()


async def _read_events(reader: asyncio.StreamReader, start: float, max_tokens: int) -> Sample:
    """The events of one response until ``[DONE]``; a completion without ``usage`` that ends
    with finish_reason "length" generated exactly ``max_tokens`` tokens."""
    status = await reader.readline()
    if b" 200 " not in status:
        rest = await reader.read(2000)
        raise RuntimeError(f"HTTP {status.decode().strip()}: {rest.decode(errors='replace')}")
    chunked = False
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        key, _, value = line.decode().partition(":")
        if key.strip().lower() == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    buffer, ttft, texts, finish, usage, last = b"", None, [], None, None, ""
    done = False
    while not done:
        if chunked:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                break
            data = await reader.readexactly(size)
            await reader.readexactly(2)
        else:
            data = await reader.read(65536)
            if not data:
                break
        buffer += data.replace(b"\r\n", b"\n")
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            for line in event.decode().splitlines():
                if not line.startswith("data:"):
                    continue
                value = line[5:].strip()
                if value == "[DONE]":
                    done = True
                    break
                obj = json.loads(value)
                last = value
                if "error" in obj:
                    raise RuntimeError(f"server error: {obj['error']}")
                usage = obj.get("usage") or usage
                for choice in obj.get("choices") or ():
                    if choice.get("text"):
                        if ttft is None:
                            ttft = time.perf_counter() - start
                        texts.append(choice["text"])
                    finish = choice.get("finish_reason") or finish
    e2e = time.perf_counter() - start
    if finish != "length":
        raise RuntimeError(f"a request ended with finish_reason {finish!r}, not 'length': {last}")
    tokens = usage["completion_tokens"] if usage else max_tokens
    return Sample(ttft if ttft is not None else e2e, e2e, tokens, "".join(texts))


def percentile(values: list[float], q: float) -> float:
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def summarize(samples: list[Sample], wall: float) -> dict:
    tokens = sum(s.tokens for s in samples)
    ms = lambda v: round(v * 1000, 1)  # noqa: E731
    return {
        "requests": len(samples),
        "wall_s": round(wall, 6),
        "requests_per_s": round(len(samples) / wall, 3),
        "completion_tokens": tokens,
        "tok_s": round(tokens / wall, 2),
        "ttft_ms_p50": ms(statistics.median(s.ttft for s in samples)),
        "ttft_ms_p99": ms(percentile([s.ttft for s in samples], 99)),
        "e2e_ms_p50": ms(statistics.median(s.e2e for s in samples)),
        "e2e_ms_p99": ms(percentile([s.e2e for s in samples], 99)),
    }


async def run_level(
    server: Server, clients: int, per_client: int, cli: argparse.Namespace
) -> tuple[dict, list[Sample]]:
    deadline = cli.request_timeout

    async def client(c: int) -> list[Sample]:
        out = []
        for r in range(per_client):
            body = {
                "model": "bench",
                "prompt": PROMPT.format(k=c * per_client + r),
                "max_tokens": cli.max_tokens,
                "temperature": 0,
                "stream": True,
                "stream_options": {"include_usage": True},
                **server.extra_body,
            }
            out.append(await stream_completion(server.port, body, deadline))
        return out

    start = time.perf_counter()
    results = await asyncio.gather(*(client(c) for c in range(clients)))
    wall = time.perf_counter() - start
    samples = [s for per in results for s in per]
    return summarize(samples, wall), samples


def in_process(gguf: Path, per_client: int, cli: argparse.Namespace) -> dict:
    """The same engine without HTTP: one client submitting the same prompts in turn."""
    model, tokenizer = pasture.load_model(gguf)
    engine = Engine(model, tokenizer, cli.max_batch)
    params = SamplingParams(max_tokens=cli.max_tokens, temperature=0)
    try:
        for warm in range(2):
            list(engine.submit(tokenizer.encode(PROMPT.format(k=-1 - warm), bos=True), params))
        samples, begin = [], time.perf_counter()
        for k in range(per_client):
            start = time.perf_counter()
            request = engine.submit(tokenizer.encode(PROMPT.format(k=k), bos=True), params)
            ttft, texts = None, []
            for delta in request:
                if delta.text and ttft is None:
                    ttft = time.perf_counter() - start
                texts.append(delta.text)
                finish = delta.finish_reason
            e2e = time.perf_counter() - start
            if finish != "length" or request.usage[1] != cli.max_tokens:
                raise RuntimeError(f"in-process request ended {finish!r} after {request.usage}")
            samples.append(Sample(ttft or e2e, e2e, request.usage[1], "".join(texts)))
        return summarize(samples, time.perf_counter() - begin)
    finally:
        engine.close()


def agreeing_chars(a: str, b: str) -> int:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="stories110M")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--requests-per-client", type=int, default=1, help="with 2+ clients")
    parser.add_argument(
        "--one-client-requests", type=int, default=2, help="at 1 client and in-process"
    )
    parser.add_argument(
        "--llama-cpp-max-clients",
        type=int,
        default=8,
        help="llama-cpp-python's server runs one request at a time: past the goal's 8 clients "
        "more clients only queue longer",
    )
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--max-batch", type=int, default=8, help="pasture serve's (its default)")
    parser.add_argument("--request-timeout", type=float, default=900.0, help="seconds, each")
    parser.add_argument("--no-llama-cpp", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="debug-size model (vocab 512), 1 and 2 clients, 1 request each, 8 tokens: checks "
        "the script runs, measures nothing",
    )
    cli = parser.parse_args()
    if cli.smoke:
        cli.size, cli.clients, cli.max_tokens = "debug", [1, 2], 8
        cli.requests_per_client = cli.one_client_requests = 1
    torch.set_num_threads(cli.threads)
    missing = [m for m in LLAMA_CPP_MODULES if importlib.util.find_spec(m) is None]
    with_llama = not cli.no_llama_cpp and not missing
    if missing and not cli.no_llama_cpp:
        print(f"llama.cpp server not measured: missing {', '.join(missing)}")
    record: dict = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "threads": cli.threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pasture": getattr(pasture, "__version__", None),
        "llama_cpp_python": None,
        "smoke": cli.smoke,
        "max_tokens": cli.max_tokens,
        "requests_per_client": cli.requests_per_client,
        "one_client_requests": cli.one_client_requests,
        "pasture_max_batch": cli.max_batch,
        "load_avg_start": load_avg(),
    }
    if with_llama:
        from importlib.metadata import version

        record["llama_cpp_python"] = version("llama_cpp_python")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        gguf = tmp_path / f"{cli.size}-random-f32.gguf"
        record["model"] = write_model(cli.size, cli.smoke, gguf)
        servers = [pasture_server(gguf, cli.threads, cli.max_batch)]
        if with_llama:
            servers.append(llama_cpp_server(gguf, cli.threads, record["model"]["max_seq_len"]))
        try:
            for s in servers:  # one at a time: loading competes for the same cores
                s.start(tmp_path)
                record[f"{s.name}_startup_s"] = round(s.wait_ready(), 2)
            record.update(levels=_measure(servers, gguf, cli, record))
        finally:
            for s in servers:
                s.stop()
            if cli.smoke is False:
                for s in servers:
                    if s.log and s.log.exists():
                        shutil.copy(
                            s.log, Path(tempfile.gettempdir()) / f"serve_speed_{s.name}.log"
                        )
    record["load_avg_end"] = load_avg()
    record.update(_ratios(record, with_llama))
    cli.out.parent.mkdir(parents=True, exist_ok=True)
    with cli.out.open("a") as f:
        f.write(json.dumps(record) + "\n")
    for row in record["levels"]:
        print(
            f"{row['server']:>11} x{row['clients']:>2}: {row['requests_per_s']:6.2f} req/s "
            f"{row['tok_s']:7.1f} tok/s  TTFT p50/p99 {row['ttft_ms_p50']:.0f}/"
            f"{row['ttft_ms_p99']:.0f} ms  e2e p50/p99 {row['e2e_ms_p50']:.0f}/"
            f"{row['e2e_ms_p99']:.0f} ms"
        )
    print("ratios:", json.dumps(record["ratios"]), "goals:", json.dumps(record["goals"]))
    print(f"load avg {record['load_avg_start']} -> {record['load_avg_end']}")


def _measure(servers: list[Server], gguf: Path, cli: argparse.Namespace, record: dict) -> list:
    rows: list[dict] = []
    first_texts: dict[str, str] = {}
    for s in servers:  # warm-up: one request each, not measured
        asyncio.run(run_level(s, 1, 1, cli))
    for i, clients in enumerate(cli.clients):
        order = servers if i % 2 == 0 else servers[::-1]
        per_client = cli.one_client_requests if clients == 1 else cli.requests_per_client
        for s in order:
            if s.name == "llama_cpp" and clients > cli.llama_cpp_max_clients:
                continue
            load = load_avg()
            summary, samples = asyncio.run(run_level(s, clients, per_client, cli))
            rows.append({"server": s.name, "clients": clients, **summary, "load_avg": load})
            if clients == 1:
                first_texts[s.name] = samples[0].text
            print(f"{s.name} x{clients}: {summary['tok_s']} tok/s", flush=True)
        if clients == 1:
            load = load_avg()
            summary = in_process(gguf, cli.one_client_requests, cli)
            rows.append({"server": "in_process", "clients": 1, **summary, "load_avg": load})
    if "llama_cpp" in first_texts:  # the same greedy text from the same weights?
        a, b = first_texts["pasture"], first_texts["llama_cpp"]
        record["greedy_text_agreement"] = {
            "chars_agreeing": agreeing_chars(a, b),
            "pasture_chars": len(a),
            "llama_cpp_chars": len(b),
        }
    return rows


def _ratios(record: dict, with_llama: bool) -> dict:
    by = {(r["server"], r["clients"]): r for r in record["levels"]}
    ratios: dict[str, float] = {}
    goals: dict[str, bool] = {}
    if ("pasture", 1) in by and ("in_process", 1) in by:
        overhead = by["pasture", 1]["e2e_ms_p50"] / by["in_process", 1]["e2e_ms_p50"] - 1
        ratios["server_overhead_pct_1_client"] = round(100 * overhead, 1)
        goals["overhead_le_10pct"] = overhead <= 0.10
    top = 8 if ("pasture", 8) in by else max(c for s, c in by if s == "pasture")
    if ("pasture", 1) in by:
        scale = by["pasture", top]["tok_s"] / by["pasture", 1]["tok_s"]
        ratios[f"pasture_tok_s_{top}_vs_1_client"] = round(scale, 2)
        goals[f"{top}_clients_ge_3x_1_client"] = scale >= 3
    if with_llama and ("llama_cpp", top) in by:
        vs = by["pasture", top]["tok_s"] / by["llama_cpp", top]["tok_s"]
        ratios[f"pasture_vs_llama_cpp_tok_s_{top}_clients"] = round(vs, 2)
        goals[f"ge_2x_llama_cpp_at_{top}_clients"] = vs >= 2
        for clients in sorted({c for s, c in by if s == "llama_cpp"}):
            ratio = by["pasture", clients]["tok_s"] / by["llama_cpp", clients]["tok_s"]
            ratios[f"pasture_vs_llama_cpp_tok_s_{clients}_clients"] = round(ratio, 2)
    return {"ratios": ratios, "goals": goals}


if __name__ == "__main__":
    main()
