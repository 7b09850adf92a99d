"""lm-evaluation-harness drives a Pasture model through ``pasture.eval.harness``: its evaluator
gets, item by item, exactly what ``PastureLM`` gives when called directly.

The tasks are lm-eval YAMLs on the original data files (tests/eval/lm_eval_tasks/).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from lm_eval import simple_evaluate
from lm_eval.api.registry import get_model
from lm_eval_support import TASK_DIR, load_tasks, one_thread  # noqa: F401  (autouse)

from pasture import load_model
from pasture.eval import GenerationRequest, PastureLM, Sampling
from pasture.eval.harness import HarnessLM, register
from pasture.eval.task import DEFAULT_BATCH_SIZE, EvalSettings

LIMIT = 8


def run_lm_eval(model, tasks: dict, limit: int = LIMIT) -> dict[str, list[dict]]:
    """Per task, lm-eval's logged samples (arguments and responses), in document order."""
    out = simple_evaluate(
        model=model,
        tasks=list(tasks.values()),
        limit=limit,
        log_samples=True,
        bootstrap_iters=0,
        random_seed=0,
        numpy_random_seed=0,
        torch_random_seed=0,
        fewshot_random_seed=0,
    )
    return {name: sorted(s, key=lambda s: s["doc_id"]) for name, s in out["samples"].items()}


@pytest.fixture(scope="module")
def stories(shared_data):
    d = shared_data / "models" / "stories260K"
    return d / "stories260K.bin", d / "tok512.model"


@pytest.fixture(scope="module")
def lm(stories) -> PastureLM:
    model, tokenizer = load_model(*stories)
    return PastureLM(model, tokenizer, batch_size=4, progress=False)


@pytest.fixture(scope="module")
def tasks(shared_data) -> dict:
    names = ["pasture_arc_easy", "pasture_arc_easy_generate", "pasture_arc_easy_rolling"]
    return load_tasks(names, shared_data / "eval")


@pytest.fixture(scope="module")
def samples(lm, tasks) -> dict[str, list[dict]]:
    return run_lm_eval(HarnessLM(lm), tasks)


@pytest.mark.slow
def test_multiple_choice_loglikelihoods_are_pastures(lm, samples):
    got = samples["pasture_arc_easy"]
    assert len(got) == LIMIT
    requests = [tuple(args) for s in got for args in s["arguments"]]
    want = lm.loglikelihood(requests)
    responses = [tuple(r) for s in got for r in s["filtered_resps"]]
    assert responses == want  # the same code path, batch-invariant: equal to the last bit
    assert requests[0] == (
        "Question: Which statement best explains why photosynthesis is the foundation of most "
        "food webs?\nAnswer:",
        " Sunlight is the source of energy for nearly all ecosystems.",
    )


@pytest.mark.slow
def test_rolling_loglikelihoods_are_pastures(lm, samples):
    got = samples["pasture_arc_easy_rolling"]
    texts = [s["arguments"][0][0] for s in got]
    assert texts[0].startswith("Which statement best explains")
    assert [s["filtered_resps"][0] for s in got] == lm.loglikelihood_rolling(texts)


@pytest.mark.slow
def test_generations_are_pastures(lm, samples):
    got = samples["pasture_arc_easy_generate"]
    contexts = [s["arguments"][0][0] for s in got]
    want = lm.generate_until([GenerationRequest(c, ("\n",), Sampling(16)) for c in contexts])
    assert [s["filtered_resps"][0] for s in got] == want
    assert all("\n" not in text for text in want) and any(text.strip() for text in want)


@pytest.mark.slow
def test_by_name_with_model_args(stories, lm, tasks, samples):
    """``--model pasture`` once registered: lm-eval builds the model from its model_args."""
    if "pasture" not in _registered():
        register(load_model)
    checkpoint, tokenizer = stories
    by_name = simple_evaluate(
        model="pasture",
        model_args=f"checkpoint={checkpoint},tokenizer={tokenizer},batch_size=3",
        tasks=[tasks["pasture_arc_easy"]],
        limit=LIMIT,
        log_samples=True,
        bootstrap_iters=0,
    )
    got = sorted(by_name["samples"]["pasture_arc_easy"], key=lambda s: s["doc_id"])
    assert [s["filtered_resps"] for s in got] == [
        s["filtered_resps"] for s in samples["pasture_arc_easy"]
    ]
    assert get_model("hf").__name__ == "HFLM"  # registering ours hid none of lm-eval's own


def test_model_args_errors_name_the_key(stories):
    if "pasture" not in _registered():
        register(load_model)
    cls = get_model("pasture")
    with pytest.raises(ValueError, match="needs checkpoint=PATH"):
        cls.create_from_arg_string("batch_size=2")
    with pytest.raises(ValueError, match="unknown key 'pretrained'"):
        cls.create_from_arg_string(f"checkpoint={stories[0]},pretrained=x")
    with pytest.raises(ValueError, match="'auto' is not supported"):
        cls.create_from_arg_string(f"checkpoint={stories[0]},batch_size=auto")


def test_batch_size_from_model_args_then_lm_evals_flag_then_pasture_evals_default(stories):
    if "pasture" not in _registered():
        register(load_model)
    cls = get_model("pasture")
    args = f"checkpoint={stories[0]},tokenizer={stories[1]}"
    assert cls.create_from_arg_string(args).lm.batch_size == DEFAULT_BATCH_SIZE
    assert cls.create_from_arg_string(args, {"batch_size": 5}).lm.batch_size == 5
    given = cls.create_from_arg_string(args + ",batch_size=3", {"batch_size": 5})
    assert given.lm.batch_size == 3
    assert EvalSettings(Path(".")).batch_size == DEFAULT_BATCH_SIZE


def _registered() -> list[str]:
    from lm_eval.api.registry import model_registry

    return list(model_registry.keys())


def test_generation_kwargs_translate_to_sampling(lm):
    harness = HarnessLM(lm, seed=7, max_gen_toks=32)
    greedy = harness.generation_request(
        "Q", {"until": "\n", "temperature": 0.7, "do_sample": False}
    )
    assert greedy.stop == ("\n",) and greedy.sampling.temperature == 0.0
    assert greedy.sampling.max_new_tokens == 32
    sampled = harness.generation_request(
        "Q", {"until": ["\n\n", "Question:"], "max_gen_toks": 5, "do_sample": True, "top_p": 0.9}
    )
    assert sampled.stop == ("\n\n", "Question:")
    assert (sampled.sampling.temperature, sampled.sampling.top_p) == (1.0, 0.9)
    assert sampled.sampling.max_new_tokens == 5
    implicit = harness.generation_request("Q", {"temperature": 0.5})
    assert implicit.sampling.temperature == 0.5 and implicit.stop == ()
    # The repeats of one request (maj@k) draw differently; the draw is a function of the
    # request, not of its position in the run.
    seeds = {harness.generation_request("Q", {}, repeat=k).sampling.seed for k in range(4)}
    assert len(seeds) == 4
    assert harness.generation_request("Q", {}).sampling.seed == (
        HarnessLM(lm, seed=7).generation_request("Q", {}).sampling.seed
    )
    with pytest.raises(ValueError, match="'num_beams' is not supported"):
        harness.generation_request("Q", {"num_beams": 4})


@pytest.mark.slow
def test_pasture_lm_eval_command_runs_lm_evals_cli(shared_data, tmp_path):
    """`pasture lm-eval …` is lm-eval's own CLI with --model pasture known (on a CPU machine
    its --device default of cuda falls back to cpu unless model_args names a device)."""
    import subprocess
    import sys

    model = shared_data / "models" / "stories260K"
    args = f"checkpoint={model / 'stories260K.bin'},tokenizer={model / 'tok512.model'}"
    cmd = [sys.executable, "-m", "pasture.cli", "lm-eval", "run", "--model", "pasture"]
    cmd += ["--model_args", args + ",batch_size=4", "--tasks", "pasture_arc_easy"]
    cmd += ["--include_path", str(TASK_DIR), "--limit", "5", "--output_path", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        cmd, cwd=shared_data / "eval", capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "|pasture_arc_easy|" in done.stdout and "acc_norm" in done.stdout
    assert list(tmp_path.rglob("results_*.json"))
