"""Chat templates from a checkpoint render in a child process bounded in time and memory: a
hostile template ends in one error line, the child is replaced, and a live server keeps
answering everyone else meanwhile."""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request

import pytest
from serve_support import load_stories

from pasture.errors import PastureError
from pasture.finetune.rendering import TemplateRenderer
from pasture.finetune.template import DEFAULT_TEMPLATE, chat_segments, load_template
from pasture.serve import ServerThread, build_app

CHATS = [
    [{"role": "user", "content": "Hi"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Où est le chat ? 🐈"},
        {"role": "assistant", "content": "Dehors."},
        {"role": "user", "content": "Et le chien ?"},
    ],
]
# Harmless unless the first message says which attack to run.
HOSTILE = (
    "{% if messages[0]['content'] == 'memory' %}{{ 'x' * 3000000000 }}{% endif %}"
    "{% if messages[0]['content'] == 'time' %}"
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}{% endif %}"
    "{% if messages[0]['content'] == 'long' %}{% for i in range(100000) %}abcdefghij"
    "{% endfor %}{% endif %}"
) + DEFAULT_TEMPLATE


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_child_renders_what_chat_segments_renders() -> None:
    tojson = "{% for m in messages %}{{ m | tojson }}{{ eos_token }}{% endfor %}"
    for template in (DEFAULT_TEMPLATE, tojson):
        with TemplateRenderer(template) as renderer:
            for chat in CHATS:
                for add in (False, True):
                    got = renderer.segments(chat, add, bos_token="<s>", eos_token="</s>")
                    assert got == chat_segments(
                        template, chat, add, bos_token="<s>", eos_token="</s>"
                    )


def test_hostile_templates_end_in_one_error_and_the_next_chat_renders(tmp_path) -> None:
    (tmp_path / "chat_template.jinja").write_text(HOSTILE)
    assert load_template(tmp_path / "chat_template.jinja") == HOSTILE  # parsed, not compiled
    with TemplateRenderer(HOSTILE, seconds=1.0, max_chars=500_000) as renderer:
        first = renderer.pid
        start = time.monotonic()
        with pytest.raises(
            PastureError, match=r"^chat template: rendering needed more than 256 MiB$"
        ):
            renderer.segments([{"role": "user", "content": "memory"}])
        assert time.monotonic() - start < 5
        assert renderer.pid == first  # a refused allocation leaves the child usable
        with pytest.raises(PastureError, match=r"^chat template: the rendered chat has 1,000,0"):
            renderer.segments([{"role": "user", "content": "long"}])
        start = time.monotonic()
        with pytest.raises(PastureError, match=r"^chat template: rendering took longer than 1 s"):
            renderer.segments([{"role": "user", "content": "time"}])
        assert time.monotonic() - start < 3
        assert renderer.pid is None
        time.sleep(0.1)
        assert not _alive(first)  # killed, not left spinning
        chat, names = CHATS[1], {"bos_token": "<s>", "eos_token": "</s>"}
        assert renderer.segments(chat, True, **names) == chat_segments(
            DEFAULT_TEMPLATE, chat, True, **names
        )
        assert renderer.pid not in (None, first)
        last = renderer.pid
    assert not _alive(last)


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_a_server_with_a_hostile_template_keeps_serving(shared_data) -> None:
    model, tokenizer = load_stories(shared_data)
    app = build_app(model, tokenizer, "stories260K", chat_template=HOSTILE, max_batch=2)
    url = "/v1/chat/completions"
    with ServerThread(app) as server:
        hostile: dict = {}

        def attack() -> None:
            body = {"model": "stories260K", "messages": [{"role": "user", "content": "time"}]}
            hostile["answer"] = _post(server.url + url, body)

        thread = threading.Thread(target=attack)
        thread.start()
        time.sleep(0.3)  # the hostile render is running now
        start = time.monotonic()
        with urllib.request.urlopen(server.url + "/health", timeout=30) as response:
            assert response.status == 200
        assert time.monotonic() - start < 1.0  # the event loop is not blocked by the render
        thread.join(timeout=30)
        status, body = hostile["answer"]
        assert status == 400
        assert body["error"]["message"].startswith("chat template: rendering took longer than")
        assert body["error"]["param"] == "messages"
        status, body = _post(
            server.url + url,
            {"model": "stories260K", "messages": CHATS[1], "max_tokens": 3, "temperature": 0},
        )
        assert status == 200 and body["usage"]["completion_tokens"] == 3
        pid = app.state.renderer.pid
        assert _alive(pid)
    assert not _alive(pid)  # the app's shutdown ended the renderer's child
