"""Instruction files: each shape detected per file, every bad line named as file:line; the
synthetic set follows its rules and is reproducible from its seed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pasture.errors import PastureError
from pasture.finetune.data import file_format, read_examples
from pasture.finetune.synthetic import TASKS, synthetic_records, write_jsonl


def _write(path: Path, lines: list[object]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def test_alpaca_with_and_without_input(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "alpaca.jsonl",
        [
            {"instruction": "Add.", "input": "2 + 3", "output": "5"},
            "",  # blank lines are skipped
            {"instruction": "Say hi.", "input": "", "output": "hi", "text": "ignored"},
        ],
    )
    assert file_format(path) == "alpaca"
    first, second = read_examples(path)
    assert first.messages == [
        {"role": "user", "content": "Add.\n\n2 + 3"},
        {"role": "assistant", "content": "5"},
    ]
    assert second.messages[0] == {"role": "user", "content": "Say hi."}
    assert (first.where, second.where) == (f"{path}:1", f"{path}:3")


def test_dolly_keys_read_as_alpaca(tmp_path: Path) -> None:
    record = {"instruction": "Sum.", "context": "1 and 1", "response": "2", "category": "qa"}
    (example,) = read_examples(_write(tmp_path / "dolly.jsonl", [record]))
    assert example.messages[0]["content"] == "Sum.\n\n1 and 1"
    assert example.messages[1]["content"] == "2"


def test_chat_and_completion(tmp_path: Path) -> None:
    chat = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u"},
        {"role": "assistant", "content": "a"},
    ]
    path = _write(tmp_path / "chat.jsonl", [{"messages": chat, "id": 7}])
    assert file_format(path) == "chat"
    assert read_examples(path)[0].messages == chat
    path = _write(tmp_path / "pc.jsonl", [{"prompt": "p", "completion": "c"}])
    assert file_format(path) == "completion"
    assert read_examples(path)[0].messages == [
        {"role": "user", "content": "p"},
        {"role": "assistant", "content": "c"},
    ]


GOOD = {"instruction": "i", "output": "o"}


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ({"text": "plain pretraining text"}, "not an instruction record"),
        ({"instruction": "i", "output": 3}, "'output' must be a string"),
        ({"instruction": "i", "input": ["x"], "output": "o"}, "'input' must be a string"),
        ({"prompt": "p", "completion": "c"}, "a completion record, but this file is alpaca"),
    ],
)
def test_bad_line_is_named(tmp_path: Path, bad: object, problem: str) -> None:
    path = _write(tmp_path / "data.jsonl", [GOOD, GOOD, bad, GOOD])
    with pytest.raises(PastureError) as info:
        read_examples(path)
    message = str(info.value)
    assert message.startswith(f"{path}:3: ") and problem in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("messages", "problem"),
    [
        ([{"role": "user", "content": "u"}], "no assistant message"),
        ([], "non-empty list"),
        ([{"role": "robot", "content": "u"}], "messages[0]: role 'robot'"),
        ([{"role": "user"}, {"role": "assistant", "content": "a"}], "messages[0]: 'content'"),
        (["hello"], "messages[0] must be an object"),
    ],
)
def test_bad_chat_is_named(tmp_path: Path, messages: list, problem: str) -> None:
    good = {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}
    path = _write(tmp_path / "chat.jsonl", [good, {"messages": messages}])
    with pytest.raises(PastureError, match=rf"^{path}:2: .*{problem}".replace("[", r"\[")):
        read_examples(path)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(PastureError, match="no such data file"):
        read_examples(tmp_path / "missing.jsonl")
    with pytest.raises(PastureError, match="empty"):
        read_examples(_write(tmp_path / "empty.jsonl", ["", "  "]))
    (tmp_path / "latin1.jsonl").write_bytes(b'{"prompt": "caf\xe9", "completion": "x"}\n')
    with pytest.raises(PastureError, match="not UTF-8"):
        read_examples(tmp_path / "latin1.jsonl")


def test_synthetic_records_follow_their_rules(tmp_path: Path) -> None:
    records = synthetic_records(200, seed=3)
    assert records == synthetic_records(200, seed=3)
    assert records != synthetic_records(200, seed=4)
    assert {r["task"] for r in records} == set(TASKS)
    for r in records:
        text, answer = r["input"], r["output"]
        if r["task"] == "copy":
            assert answer == text
        elif r["task"] == "reverse":
            assert "".join(reversed(answer)) == text
        elif r["task"] == "uppercase":
            assert answer == text.upper() and answer != text
        else:
            a, b = (int(x) for x in text.split(" + "))
            assert int(answer) == a + b
    examples = read_examples(write_jsonl(tmp_path / "synthetic.jsonl", records))
    assert len(examples) == 200 and examples[5].messages[1]["content"] == records[5]["output"]
