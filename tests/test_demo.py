"""The job `make demo` runs, end to end on a small slice of the default corpus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pasture.demo import run_demo


@pytest.mark.slow
def test_demo(tmp_path: Path, shared_data: Path, capsys) -> None:
    run_demo(tmp_path, data=shared_data, corpus_bytes=1_000_000, train_steps=40, finetune_steps=60)
    steps = [json.loads(line) for line in (tmp_path / "demo.jsonl").read_text().splitlines()]
    names = [s["step"] for s in steps]
    assert names[0] == "tokenizer" and names[-2:] == ["generate_stories260K", "instruction_tune"]
    assert steps[0]["digits"] == ["▁", "1", "2", "3", "4", "5"]
    trips = [s for s in steps if s["step"] == "round_trip"]
    assert [t["format"] for t in trips] == ["meta", "hf", "llama2c", "gguf", "meta"]
    assert all(t["max_abs_logit_delta"] == 0.0 for t in trips)
    trained = next(s for s in steps if s["step"] == "train")
    assert trained["last_loss"] < 0.75 * trained["first_loss"]
    assert trained["tco2eq"] >= 0 and trained["method"] == "estimate"
    assert (tmp_path / "train" / "loss.png").stat().st_size > 10_000
    assert (tmp_path / "trained-hf" / "model.safetensors").is_file()
    assert steps[-2]["completion"].startswith(", there was a")
    out = capsys.readouterr().out
    assert "Once upon a time, there was a" in out
    tuned = steps[-1]  # finetuned on instructions; answers through the saved template
    assert tuned["loss_after"] < 0.8 * tuned["loss_before"]
    assert (Path(tuned["out"]) / "chat_template.jinja").is_file()
    assert f"-> {tuned['answer']!r}" in out
