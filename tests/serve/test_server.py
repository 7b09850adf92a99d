"""The OpenAI-compatible server on 127.0.0.1 with stories260K, driven by the official
``openai`` client (as llama.cpp's server tests do with the same model): completions, chat,
streaming chunk shapes, usage, stop strings split across tokens, logprobs, errors, metrics,
the API key, and cancellation under load."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import openai
import pytest
from serve_support import load_stories, random_model

from pasture.finetune.template import DEFAULT_TEMPLATE, encode_chat
from pasture.generate import generate, generate_tokens
from pasture.serve import ServerThread, build_app, load_app

PROMPT = "Once upon a time"


def fetch(method: str, url: str, body: object = None, raw: bytes | None = None):
    """(status, headers, body bytes) of one plain HTTP request (no client library)."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def client(server, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, **kwargs)


def test_models_and_health(server) -> None:
    models = client(server).models.list()
    assert [m.id for m in models.data] == ["stories260K"]
    status, _, body = fetch("GET", server.url + "/health")
    assert status == 200 and json.loads(body)["status"] == "ok"


@pytest.mark.slow
def test_completion_is_generate_s_greedy_text_with_exact_usage(server, shared_data) -> None:
    model, tokenizer = load_stories(shared_data)
    expected = generate(model, tokenizer, PROMPT, max_new_tokens=40)
    ids = generate_tokens(model, [tokenizer.encode(PROMPT, bos=True)], 40, stop_ids=(1, 2))[0]
    result = client(server).completions.create(
        model="stories260K", prompt=PROMPT, max_tokens=40, temperature=0
    )
    assert result.object == "text_completion"
    assert result.choices[0].text == expected
    assert result.choices[0].finish_reason == ("length" if len(ids) == 40 else "stop")
    assert result.usage.prompt_tokens == len(tokenizer.encode(PROMPT, bos=True))
    assert result.usage.completion_tokens == len(ids) + (len(ids) < 40)  # + the EOS, if any
    assert result.usage.total_tokens == result.usage.prompt_tokens + 40


def test_chat_prompt_is_the_template_and_stream_matches_non_stream(server) -> None:
    messages = [
        {"role": "system", "content": "Tell a story."},
        {"role": "user", "content": "A story about a dog"},
    ]
    ids, _ = encode_chat(server.tokenizer, DEFAULT_TEMPLATE, messages, True)
    api = client(server)
    whole = api.chat.completions.create(
        model="stories260K", messages=messages, max_tokens=30, temperature=0
    )
    assert whole.object == "chat.completion"
    assert whole.choices[0].message.role == "assistant"
    assert whole.usage.prompt_tokens == len(ids)
    chunks = list(
        api.chat.completions.create(
            model="stories260K",
            messages=messages,
            max_tokens=30,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].finish_reason is None
    content = [c for c in chunks[1:-2]]
    assert content and all(c.choices[0].finish_reason is None for c in content)
    assert chunks[-2].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-2].choices[0].delta.content is None  # the last choice: an empty delta
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1])
    assert text == whole.choices[0].message.content and text


def test_raw_sse_ends_with_done(server) -> None:
    body = {"model": "stories260K", "prompt": PROMPT, "max_tokens": 5, "stream": True}
    status, headers, raw = fetch("POST", server.url + "/v1/completions", body)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = [line for line in raw.decode().split("\n") if line]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert "usage" not in chunks[-1]  # only with stream_options.include_usage


def test_stop_string_split_across_tokens(server, shared_data) -> None:
    model, tokenizer = load_stories(shared_data)
    prompt = tokenizer.encode(PROMPT, bos=True)
    ids = generate_tokens(model, [prompt], 50, stop_ids=(1, 2))[0]
    texts = [tokenizer.decode(prompt + ids[: k + 1]) for k in range(len(ids))]
    # The stop string straddles tokens k and k+1.
    k = next(k for k in range(8, len(ids) - 1) if len(texts[k]) - len(texts[k - 1]) >= 3)
    full = texts[-1][len(tokenizer.decode(prompt)) :]
    stop = texts[k][-3:] + texts[k + 1][len(texts[k]) : len(texts[k]) + 2]
    api = client(server)
    result = api.completions.create(
        model="stories260K", prompt=PROMPT, max_tokens=50, temperature=0, stop=[stop]
    )
    assert result.choices[0].text == full[: full.index(stop)]
    assert result.choices[0].finish_reason == "stop"
    streamed = api.completions.create(
        model="stories260K", prompt=PROMPT, max_tokens=50, temperature=0, stop=stop, stream=True
    )
    pieces = [c.choices[0].text for c in streamed]
    assert "".join(pieces) == result.choices[0].text
    assert all(stop not in p for p in pieces)


def test_logprobs_tokens_join_to_the_content(server) -> None:
    api = client(server)
    result = api.completions.create(
        model="stories260K", prompt=PROMPT, max_tokens=25, temperature=0.8, seed=3, logprobs=3
    )
    logprobs = result.choices[0].logprobs
    assert "".join(logprobs.tokens) == result.choices[0].text
    assert len(logprobs.tokens) == result.usage.completion_tokens - (
        result.choices[0].finish_reason == "stop"
    )
    assert logprobs.text_offset[0] == 0 and all(lp <= 0 for lp in logprobs.token_logprobs)
    for top, chosen in zip(logprobs.top_logprobs, logprobs.token_logprobs, strict=True):
        assert len(top) <= 3 and max(top.values()) >= chosen - 1e-6
    chat = api.chat.completions.create(
        model="stories260K",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=20,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    content = chat.choices[0].logprobs.content
    assert "".join(c.token for c in content) == chat.choices[0].message.content
    for entry in content:  # greedy: the chosen token is the most likely
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)
        assert bytes(entry.bytes) == entry.token.encode()


def test_token_id_prompts_and_zero_max_tokens(server) -> None:
    api = client(server)
    ids = server.tokenizer.encode(PROMPT, bos=True)
    as_text = api.completions.create(
        model="stories260K", prompt=PROMPT, max_tokens=8, temperature=0
    )
    as_ids = api.completions.create(model="stories260K", prompt=ids, max_tokens=8, temperature=0)
    assert as_ids.choices[0].text == as_text.choices[0].text
    assert as_ids.usage == as_text.usage
    nothing = api.completions.create(model="stories260K", prompt=ids, max_tokens=0)
    assert nothing.choices[0].text == "" and nothing.choices[0].finish_reason == "length"
    assert (nothing.usage.prompt_tokens, nothing.usage.completion_tokens) == (len(ids), 0)
    with pytest.raises(openai.BadRequestError, match="n must be 1"):
        api.completions.create(model="stories260K", prompt=PROMPT, n=2)
    with pytest.raises(openai.BadRequestError, match="token ids must be in") as caught:
        api.completions.create(model="stories260K", prompt=[1, 99999])
    assert caught.value.body["param"] == "prompt" and caught.value.body["code"] is None


def test_seed_reproduces_a_sample(server) -> None:
    api = client(server)
    runs = [
        api.completions.create(
            model="stories260K", prompt=PROMPT, max_tokens=30, temperature=1.0, seed=42
        )
        .choices[0]
        .text
        for _ in range(2)
    ]
    assert runs[0] == runs[1]


@pytest.mark.parametrize(
    ("request_args", "param", "fragment"),
    [
        ({"model": "gpt-4", "prompt": "x"}, "model", "does not exist"),
        ({"model": "stories260K", "prompt": "x", "max_tokens": -1}, "max_tokens", "at least 0"),
        ({"model": "stories260K", "prompt": "x " * 600}, "prompt", "maximum context length"),
        ({"model": "stories260K", "prompt": "x", "max_tokens": 600}, "prompt", "shorten"),
        ({"model": "stories260K", "prompt": "x", "temperature": 3}, None, "temperature"),
    ],
)
def test_completion_errors_have_openai_bodies(server, request_args, param, fragment) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(server).completions.create(**request_args)
    error = caught.value.body
    assert caught.value.status_code == 400
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert fragment in error["message"]
    if "context" in fragment:
        assert error["code"] == "context_length_exceeded"


def test_chat_errors_have_openai_bodies(server) -> None:
    api = client(server)
    with pytest.raises(openai.BadRequestError) as caught:
        api.chat.completions.create(
            model="stories260K", messages=[{"role": "wizard", "content": "hi"}]
        )
    assert caught.value.body["param"] == "messages[0].role"
    with pytest.raises(openai.BadRequestError) as caught:
        api.chat.completions.create(model="stories260K", messages=[])
    assert caught.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as caught:
        api.chat.completions.create(
            model="stories260K", messages=[{"role": "user", "content": "hi"}], max_tokens=-5
        )
    assert "max_tokens must be at least 0" in caught.value.body["message"]
    status, _, body = fetch("POST", server.url + "/v1/chat/completions", raw=b"{not json")
    assert status == 400 and "JSON" in json.loads(body)["error"]["message"]


def test_metrics_are_prometheus_text(server) -> None:
    client(server).completions.create(model="stories260K", prompt=PROMPT, max_tokens=3)
    assert fetch("POST", server.url + "/v1/completions", {"model": "x"})[0] == 400
    status, headers, body = fetch("GET", server.url + "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    lines = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in body.decode().splitlines()
        if line and not line.startswith("#")
    }
    assert lines['pasture_requests_total{endpoint="completions",finish_reason="length"}'] >= 1
    assert lines["pasture_generation_tokens_total"] >= 3
    assert lines["pasture_queue_length"] == 0
    assert lines['pasture_time_to_first_token_seconds_bucket{le="+Inf"}'] >= 1
    assert lines['pasture_refused_requests_total{status="400"}'] >= 1


def test_a_checkpoint_s_own_chat_template_is_used(shared_data, tmp_path) -> None:
    folder = shared_data / "models" / "stories260K"
    (tmp_path / "tiny.bin").symlink_to(folder / "stories260K.bin")
    template = "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n"
    template += "{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}"
    (tmp_path / "chat_template.jinja").write_text(template)
    app = load_app(tmp_path / "tiny.bin", tokenizer=folder / "tok512.model", max_batch=1)
    messages = [{"role": "user", "content": "Where is the cat?"}]
    with ServerThread(app) as server:
        api = client(server)
        assert [m.id for m in api.models.list().data] == ["tiny"]
        result = api.chat.completions.create(model="tiny", messages=messages, max_tokens=1)
    ids, _ = encode_chat(app.state.engine.tokenizer, template, messages, True)
    assert ids[1:] == app.state.engine.tokenizer.encode("[user] Where is the cat?\n[assistant] ")
    assert result.usage.prompt_tokens == len(ids)


def test_api_key_is_required_when_set(shared_data) -> None:
    model, tokenizer = load_stories(shared_data)
    app = build_app(model, tokenizer, "stories260K", api_key="s3cret", max_batch=2)
    with ServerThread(app) as server:
        with pytest.raises(openai.AuthenticationError) as caught:
            client(server).models.list()
        assert caught.value.body["code"] == "invalid_api_key"
        keyed = openai.OpenAI(base_url=server.url + "/v1", api_key="s3cret", max_retries=0)
        assert keyed.completions.create(model="stories260K", prompt="Hi", max_tokens=2).choices
        assert fetch("GET", server.url + "/health")[0] == 200


def test_closing_a_stream_cancels_its_generation(shared_data) -> None:
    _, tokenizer = load_stories(shared_data)
    app = build_app(random_model(tokenizer), tokenizer, "random", max_batch=2)
    engine = app.state.engine
    with ServerThread(app) as server:
        connection = http.client.HTTPConnection(server.host, server.port, timeout=30)
        body = {"model": "random", "prompt": "Hi", "max_tokens": 1000, "temperature": 0}
        body["stream"] = True
        connection.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "a/json"})
        response = connection.getresponse()
        assert response.status == 200
        assert response.readline().startswith(b"data: {")  # it is streaming
        connection.close()
        deadline = time.monotonic() + 5
        while engine.finished.get("cancelled", 0) < 1:
            assert time.monotonic() < deadline, engine.finished
            time.sleep(0.05)
        assert engine.running == 0 and engine.stats["completion_tokens"] < 1000


def _metrics(url: str) -> dict[str, float]:
    status, _, body = fetch("GET", url + "/metrics")
    assert status == 200
    lines = [line for line in body.decode().splitlines() if line and not line.startswith("#")]
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines}


@pytest.mark.slow
def test_cancellation_under_load(shared_data, tmp_path) -> None:
    """vLLM's test: 200 requests that time out after 0.5 s, then a new one completes in 5 s.
    The server runs in its own process (``serve``), as deployed: in this process its threads
    would share the client's interpreter lock."""
    folder = shared_data / "models" / "stories260K"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = "import sys; from pasture.serve import serve; serve(sys.argv[1], port=int(sys.argv[2]), "
    code += "tokenizer=sys.argv[3], log_level='warning')"
    args = [sys.executable, "-c", code, str(folder / "stories260K.bin"), str(port)]
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen([*args, str(folder / "tok512.model")], stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, "the server did not start in 60 s"
            try:
                if fetch("GET", url + "/health")[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)

        async def flood() -> list[object]:
            warm = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
            await warm.models.list()  # the client's first-call setup is not part of the timeout
            api = warm.with_options(timeout=0.5)

            async def one(i: int) -> object:
                if i % 2:
                    messages = [{"role": "user", "content": "Tell me a story"}]
                    return await api.chat.completions.create(
                        model="stories260K", messages=messages, max_tokens=400, temperature=1.0
                    )
                return await api.completions.create(
                    model="stories260K", prompt=PROMPT, max_tokens=400, temperature=1.0
                )

            try:
                return await asyncio.gather(*(one(i) for i in range(200)), return_exceptions=True)
            finally:
                await warm.close()

        outcomes = asyncio.run(flood())
        timeouts = sum(isinstance(o, openai.APITimeoutError) for o in outcomes)
        assert timeouts >= 180, [o for o in outcomes if not isinstance(o, openai.APITimeoutError)]
        start = time.monotonic()
        quick = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=5)
        answer = quick.completions.create(
            model="stories260K", prompt=PROMPT, max_tokens=10, temperature=0
        )
        assert time.monotonic() - start < 5
        assert answer.choices[0].finish_reason == "length"
        deadline = time.monotonic() + 5
        while (metrics := _metrics(url))["pasture_queue_length"] or metrics[
            "pasture_running_requests"
        ]:  # every abandoned request ends
            assert time.monotonic() < deadline, metrics
            time.sleep(0.1)
        ended = {k: v for k, v in metrics.items() if k.startswith("pasture_requests_total")}
        cancelled = sum(v for k, v in ended.items() if 'finish_reason="cancelled"' in k)
        assert cancelled >= 16, ended  # the server saw the load (two batches' worth) and let go
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
