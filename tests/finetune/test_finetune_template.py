"""The chat template renders as transformers renders the same Jinja string, runs sandboxed, and
marks exactly the answers (and their EOS) as response tokens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from pasture.data.tokenizer import Tokenizer
from pasture.errors import PastureError
from pasture.finetune.template import (
    DEFAULT_TEMPLATE,
    TEMPLATE_FILE,
    chat_segments,
    encode_chat,
    find_template,
    load_template,
    render,
    save_template,
)

CHATS = [
    [{"role": "user", "content": "Reverse the letters.\n\ncup"}],
    [
        {"role": "user", "content": "Reverse the letters.\n\ncup"},
        {"role": "assistant", "content": "puc"},
    ],
    [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Add 2 and 3."},
        {"role": "assistant", "content": "5"},
        {"role": "user", "content": 'And 4 more? "quotes" <b>&</b>'},
    ],
]
# Hugging Face's ChatML template (as in many tokenizer_config.json files).
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIALS = {"bos_token": "<s>", "eos_token": "</s>"}


def _hf(template: str, chat: list[dict], add_generation_prompt: bool) -> str:
    out = render_jinja_template(
        [chat], chat_template=template, add_generation_prompt=add_generation_prompt, **SPECIALS
    )
    rendered = out[0] if isinstance(out, tuple) else out  # (texts, generation indices)
    return rendered[0]


@pytest.mark.parametrize("template", [DEFAULT_TEMPLATE, CHATML], ids=["default", "chatml"])
@pytest.mark.parametrize("chat", CHATS, ids=["prompt", "one-turn", "multi-turn"])
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_renders_as_transformers(template: str, chat: list[dict], generation_prompt: bool) -> None:
    ours = render(template, chat, generation_prompt, **SPECIALS)
    assert ours == _hf(template, chat, generation_prompt)


def test_default_template_is_the_documented_alpaca_layout() -> None:
    chat = CHATS[2][:3]
    text = render(DEFAULT_TEMPLATE, chat, False, **SPECIALS)
    parts = [
        "<s>" + chat[0]["content"],
        "### Instruction:\n" + chat[1]["content"],
        "### Response:\n" + chat[2]["content"] + "</s>",
    ]
    assert text == "\n\n".join(parts)
    prompt = render(DEFAULT_TEMPLATE, chat[:2], True, **SPECIALS)
    assert prompt == "\n\n".join(parts[:2]) + "\n\n### Response:\n"


def test_sandbox_refuses_reaching_python_internals() -> None:
    with pytest.raises(PastureError, match="sandbox|chat template"):
        render("{{ ''.__class__.__mro__[1].__subclasses__() }}", [], False)
    with pytest.raises(PastureError, match="chat template: stop here"):
        render("{{ raise_exception('stop here') }}", [], False)
    with pytest.raises(PastureError, match="unknown role tool"):
        render(DEFAULT_TEMPLATE, [{"role": "tool", "content": "x"}], False, **SPECIALS)


def test_save_load_and_find_beside_a_checkpoint(tmp_path: Path) -> None:
    path = save_template(tmp_path, CHATML)
    assert path == tmp_path / TEMPLATE_FILE
    assert load_template(path) == CHATML
    assert find_template(tmp_path) == CHATML
    assert find_template(tmp_path / "model.safetensors") == CHATML
    (tmp_path / "other").mkdir()
    assert find_template(tmp_path / "other") is None
    config = tmp_path / "tokenizer_config.json"
    config.write_text(json.dumps({"chat_template": CHATML}))
    assert load_template(config) == CHATML
    assert load_template(None) == DEFAULT_TEMPLATE
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in messages %}")
    with pytest.raises(PastureError, match=r"bad\.jinja: chat template line 1"):
        load_template(bad)
    with pytest.raises(PastureError, match="no such chat template"):
        load_template(tmp_path / "missing.jinja")


def test_a_template_that_rewrites_earlier_text_is_refused() -> None:
    # Renders the last message differently from the earlier ones: not a prefix of itself.
    template = "{% for m in messages %}{{ m['content'] if loop.last else '*' }}{% endfor %}"
    chat = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    with pytest.raises(PastureError, match="does not extend"):
        chat_segments(template, chat)


@pytest.fixture(scope="module")
def tokenizer(shared_data: Path) -> Tokenizer:
    return Tokenizer.from_file(shared_data / "models" / "stories260K" / "tok512.model")


def test_response_tokens_are_the_answers_and_their_eos(tokenizer: Tokenizer) -> None:
    chat = CHATS[2][:3] + [CHATS[2][3], {"role": "assistant", "content": "9 in all"}]
    ids, is_response = encode_chat(tokenizer, DEFAULT_TEMPLATE, chat)
    assert ids[0] == tokenizer.bos_id
    # The response runs: maximal stretches of response tokens, one per assistant message.
    runs, current = [], []
    for token, response in zip(ids, is_response, strict=True):
        if response:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    runs += [current] if current else []
    answers = [m["content"] for m in chat if m["role"] == "assistant"]
    assert [run[-1] for run in runs] == [tokenizer.eos_id] * len(answers)
    assert [tokenizer.decode(run) for run in runs] == answers
    # Everything else decodes to the template's text around the answers.
    prompt_text = tokenizer.decode([t for t, r in zip(ids, is_response, strict=True) if not r])
    assert "### Instruction:" in prompt_text and "9 in all" not in prompt_text


def test_generation_prompt_encodes_as_the_training_prefix(tokenizer: Tokenizer) -> None:
    chat = CHATS[1]
    train_ids, is_response = encode_chat(tokenizer, DEFAULT_TEMPLATE, chat)
    prompt_ids, prompt_mask = encode_chat(tokenizer, DEFAULT_TEMPLATE, chat[:1], True)
    first_answer = is_response.index(True)
    assert prompt_ids == train_ids[:first_answer]
    assert not any(prompt_mask)
