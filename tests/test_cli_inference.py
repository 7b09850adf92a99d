"""The inference verbs end to end: ``pasture quantize``, ``generate --quantize/--chat`` and
``pasture serve`` started as a user starts it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from cli_support import cli_error
from launch import free_port

from pasture.cli import main
from pasture.finetune.template import save_template

pytestmark = pytest.mark.full_data


@pytest.fixture(scope="module")
def stories(shared_data: Path) -> list[str]:
    folder = shared_data / "models" / "stories260K"
    return [str(folder / "stories260K.bin"), "--tokenizer", str(folder / "tok512.model")]


def _generate(argv: list[str], capsys) -> str:
    common = ["--prompt", "Once upon a time", "--temperature", "0", "--max-new-tokens", "24"]
    assert main(["generate", *argv, *common]) == 0
    return capsys.readouterr().out


@pytest.mark.slow
def test_quantized_checkpoint_generates_as_quantize_on_load(stories, tmp_path, capsys) -> None:
    src, _, tok = stories
    dst = tmp_path / "int8"
    assert main(["quantize", src, str(dst), "--dtype", "int8", "--tokenizer", tok]) == 0
    assert "36 linear layers -> int8" in capsys.readouterr().err
    from_file = _generate(["--checkpoint", str(dst)], capsys)
    on_load = _generate(["--checkpoint", src, "--tokenizer", tok, "--quantize", "int8"], capsys)
    full = _generate(["--checkpoint", src, "--tokenizer", tok], capsys)
    assert from_file == on_load and from_file.startswith("Once upon a time")
    # run.c's greedy story (MANIFEST) begins the same way in float32 and in int8
    assert full.startswith("Once upon a time, there was a little girl named Lily.")
    assert from_file.startswith("Once upon a time, there was a little girl named Lily.")


def test_quantize_errors_are_one_line(stories, tmp_path, capsys) -> None:
    src, _, tok = stories
    (tmp_path / "mine.txt").write_text("keep")
    cli_error(["quantize", src, str(tmp_path), "--dtype", "int8", "--tokenizer", tok], capsys,
              "mine.txt")  # fmt: skip
    assert (tmp_path / "mine.txt").read_text() == "keep"
    cli_error(["quantize", src, str(tmp_path / "q"), "--dtype", "int4", "--group-size", "48"],
              capsys, "group size 48")  # fmt: skip
    cli_error(["generate", "--checkpoint", src, "--tokenizer", tok, "--quantize", "int3"],
              capsys, "--quantize")  # fmt: skip


@pytest.mark.slow
def test_chat_uses_the_template_beside_the_checkpoint(stories, tmp_path, capsys) -> None:
    src, _, tok = stories
    hf = tmp_path / "hf"
    assert main(["convert", src, str(hf), "--to", "hf", "--tokenizer", tok]) == 0
    capsys.readouterr()
    shouty = "{% for m in messages %}USER SAYS: {{ m['content'] }}\n{% endfor %}ONCE"
    args = ["generate", "--checkpoint", str(hf), "--chat", "--temperature", "0"]
    args += ["--max-new-tokens", "16", "--prompt", "Tell a story."]
    assert main(args) == 0
    default = json.loads(capsys.readouterr().out)
    save_template(hf, shouty)
    assert main(args) == 0
    beside = json.loads(capsys.readouterr().out)
    (tmp_path / "t.jinja").write_text(shouty)
    assert main([*args, "--chat-template", str(tmp_path / "t.jinja")]) == 0
    explicit = json.loads(capsys.readouterr().out)
    assert beside == explicit != default
    assert beside["prompt"] == "Tell a story." and isinstance(beside["answer"], str)


@pytest.mark.slow
@pytest.mark.slow
def test_serve_starts_from_the_command_line(stories, tmp_path) -> None:
    src, _, tok = stories
    port = free_port()
    command = [sys.executable, "-m", "pasture.cli", "serve", "--checkpoint", src]
    command += ["--tokenizer", tok, "--port", str(port), "--quantize", "int8"]
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as r:
                    models = json.load(r)
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()
                assert time.monotonic() < deadline, "the server did not come up in 60 s"
                time.sleep(0.2)
        assert [m["id"] for m in models["data"]] == ["stories260K"]
        body = json.dumps({"model": "stories260K", "prompt": "Once upon a time",
                           "max_tokens": 8, "temperature": 0}).encode()  # fmt: skip
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/completions",
            body,
            {"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as r:
            completion = json.load(r)
        assert completion["usage"]["completion_tokens"] == 8
        assert completion["choices"][0]["text"].startswith(",")  # "…time, there was…"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
