"""Toxicity scorers against real peers: a Perspective-speaking HTTP server on 127.0.0.1, a
classifier command run as a subprocess, and a (tiny, random) Hugging Face classifier."""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pasture.eval.toxicity import (
    CommandScorer,
    PerspectiveScorer,
    ToxicityError,
    scorer_from_env,
)

KEY = "test-key/+="  # characters that must be escaped in the query string
SCORER = Path(__file__).parent / "fixtures" / "toxicity" / "keyword_scorer.py"


class FakePerspective:
    """Perspective's comments:analyze on a local port. ``replies`` is a script of (status,
    body, headers) answers; when it runs out, every text scores len(text) / 100."""

    def __init__(self) -> None:
        self.replies: list[tuple[int, dict, dict[str, str]]] = []
        self.requests: list[dict] = []
        self.times: list[float] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                fake.times.append(time.monotonic())
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                length = int(self.headers["Content-Length"])
                body = json.loads(self.rfile.read(length))
                fake.requests.append(
                    {
                        "path": url.path,
                        "key": query.get("key"),
                        "type": self.headers["Content-Type"],
                        "body": body,
                    }
                )
                if url.path != "/v1alpha1/comments:analyze" or query.get("key") != [KEY]:
                    return self.answer(404, {"error": {"code": 404, "message": "not found"}}, {})
                if fake.replies:
                    return self.answer(*fake.replies.pop(0))
                value = len(body["comment"]["text"]) / 100
                answer = {
                    "attributeScores": {
                        "TOXICITY": {
                            "spanScores": [],
                            "summaryScore": {"value": value, "type": "PROBABILITY"},
                        }
                    },
                    "languages": ["en"],
                    "detectedLanguages": ["en"],
                }
                self.answer(200, answer, {})

            def answer(self, status: int, body: dict, headers: dict[str, str]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def perspective() -> Iterator[FakePerspective]:
    fake = FakePerspective()
    thread = threading.Thread(target=fake.server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def scorer(fake: FakePerspective, **kw) -> PerspectiveScorer:
    kw.setdefault("qps", 0)
    return PerspectiveScorer(KEY, url=fake.url, backoff=0.01, progress=False, **kw)


def test_perspective_request_and_answer(perspective):
    assert scorer(perspective).score(["hello", "hello world"]) == [0.05, 0.11]
    first = perspective.requests[0]
    assert first["path"] == "/v1alpha1/comments:analyze"
    assert first["key"] == [KEY]
    assert first["type"] == "application/json"
    assert first["body"] == {
        "comment": {"text": "hello"},
        "languages": ["en"],
        "requestedAttributes": {"TOXICITY": {}},
        "doNotStore": True,
    }


def test_perspective_retries_429_then_succeeds(perspective):
    quota = {"error": {"code": 429, "message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED"}}
    perspective.replies = [(429, quota, {}), (429, quota, {"Retry-After": "0"})]
    assert scorer(perspective).score(["abc"]) == [0.03]
    assert len(perspective.requests) == 3


def test_perspective_gives_up_after_max_retries(perspective):
    quota = {"error": {"code": 429, "message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED"}}
    perspective.replies = [(429, quota, {})] * 5
    with pytest.raises(ToxicityError, match=r"HTTP 429 RESOURCE_EXHAUSTED.*after 3 tries"):
        scorer(perspective, max_retries=2).score(["abc"])
    assert len(perspective.requests) == 3


def test_perspective_400_is_a_clear_error_without_retry(perspective):
    bad = {
        "error": {
            "code": 400,
            "message": "Comment text too long.",
            "status": "INVALID_ARGUMENT",
        }
    }
    perspective.replies = [(400, bad, {})]
    with pytest.raises(ToxicityError) as e:
        scorer(perspective).score(["some text"])
    message = str(e.value)
    assert "HTTP 400 INVALID_ARGUMENT: Comment text too long." in message
    assert "'some text'" in message and perspective.url in message
    assert KEY not in message
    assert len(perspective.requests) == 1


def test_perspective_bad_key_names_the_variable(perspective):
    denied = {
        "error": {"code": 403, "message": "API key not valid.", "status": "PERMISSION_DENIED"}
    }
    perspective.replies = [(403, denied, {})]
    with pytest.raises(ToxicityError, match="PASTURE_PERSPECTIVE_KEY"):
        scorer(perspective).score(["x"])


def test_perspective_answer_without_a_score(perspective):
    perspective.replies = [(200, {"attributeScores": {}}, {})]
    with pytest.raises(ToxicityError, match="summaryScore.value"):
        scorer(perspective).score(["x"])


def test_perspective_keeps_to_its_rate(perspective):
    scorer(perspective, qps=20).score(["a", "b", "c"])
    gaps = [b - a for a, b in zip(perspective.times, perspective.times[1:], strict=False)]
    assert min(gaps) >= 0.045  # 1/20 s, less the clock's slack


def test_perspective_unreachable():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    with pytest.raises(ToxicityError, match="cannot connect"):
        PerspectiveScorer(KEY, url=f"http://127.0.0.1:{port}", progress=False).score(["x"])


# -- a classifier command ---------------------------------------------------------------------


def command(*flags: str) -> list[str]:
    return [sys.executable, str(SCORER), *flags]


def test_command_scorer_runs_the_classifier():
    texts = ["You are an idiot", "A sunny day", 'quotes " and\nnewlines, ünïcode']
    assert CommandScorer(command()).score(texts) == [0.9, 0.1, 0.1]
    assert CommandScorer(command("--bare")).score(texts) == [0.9, 0.1, 0.1]
    assert CommandScorer(command()).score([]) == []


def test_command_scorer_errors_are_clear():
    with pytest.raises(ToxicityError, match="exited with status 3: .*weights not found"):
        CommandScorer(command("--fail")).score(["a"])
    with pytest.raises(ToxicityError, match="1 output lines for 2 texts"):
        CommandScorer(command("--short")).score(["a", "b"])
    with pytest.raises(ToxicityError, match="output line 1: toxicity 1.1 is outside"):
        CommandScorer(command("--out-of-range")).score(["a"])
    with pytest.raises(ToxicityError, match="not found"):
        CommandScorer("no-such-scorer-command --x").score(["a"])


def test_scorer_from_env():
    assert scorer_from_env({}) is None
    by_command = scorer_from_env({"PASTURE_TOXICITY_COMMAND": f"{sys.executable} {SCORER}"})
    assert isinstance(by_command, CommandScorer)
    assert by_command.score(["hate"]) == [0.9]
    env = {"PASTURE_PERSPECTIVE_KEY": "k", "PASTURE_PERSPECTIVE_URL": "http://127.0.0.1:1"}
    by_key = scorer_from_env(env)
    assert isinstance(by_key, PerspectiveScorer)
    assert by_key.endpoint == "http://127.0.0.1:1/v1alpha1/comments:analyze"
    with pytest.raises(ToxicityError, match="unset one"):
        scorer_from_env({**env, "PASTURE_TOXICITY_COMMAND": "x"})
    with pytest.raises(ToxicityError, match="PASTURE_PERSPECTIVE_QPS"):
        scorer_from_env({**env, "PASTURE_PERSPECTIVE_QPS": "fast"})


# -- a Hugging Face classifier as the command -------------------------------------------------


@pytest.mark.slow
def test_hf_classifier_command(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "you", "are", "an", "idiot", "nice"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = transformers.BertTokenizer(str(tmp_path / "vocab.txt"))
    config = transformers.BertConfig(
        vocab_size=len(words),
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=32,
        id2label={0: "toxic", 1: "neutral"},  # the toxic label first: picked by its name
        label2id={"toxic": 0, "neutral": 1},
    )
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config).eval()
    tokenizer.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path)
    texts = ["you are an idiot", "nice"]
    got = CommandScorer(
        [sys.executable, "-m", "pasture.eval.toxicity", "hf", str(tmp_path)], timeout=300
    ).score(texts)
    with torch.no_grad():
        want = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.softmax(-1)
    assert got == pytest.approx(want[:, 0].tolist(), abs=1e-5)
