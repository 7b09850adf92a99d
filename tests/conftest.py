"""Shared test fixtures and where the test data comes from.

The full data set is $PASTURE_DATA when set, else ../shared/data when present (as in CI).
There every test runs, and a skipped test fails the run: nothing may hide behind a skip.

A bare clone has neither: the tests then run on tests/assets/data, a small redistributable
subset of the full set (see its MANIFEST.md), and the tests that need more than the subset
(`@pytest.mark.full_data`, or listed in FULL_DATA below) are skipped, reported as one line
that says what to set.

Tests that take more than a few seconds are marked ``@pytest.mark.slow``: `make test-fast` (ruff
and ``pytest -m "not slow"``, under a minute) leaves them out for the edit loop; `make test`
runs everything. docs/testing.md has the layout and the tiers.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SUBSET = REPO / "tests" / "assets" / "data"
FULL_DATA_HINT = (
    "needs the full data set: set PASTURE_DATA=/path/to/shared/data "
    "(or put it at ../shared/data) to run them"
)


def _resolve() -> tuple[Path, bool, str]:
    """(data root, whether it is the full set, what is wrong with $PASTURE_DATA if anything)."""
    explicit = os.environ.get("PASTURE_DATA", "")
    if explicit:
        path = Path(explicit).resolve()
        if not path.is_dir():
            problem = f"PASTURE_DATA={explicit} is not a folder: point it at the shared data "
            problem += "(../shared/data), or unset it to test on the subset in tests/assets/data"
            return path, True, problem
        return path, path != SUBSET.resolve(), ""
    default = REPO.parent / "shared" / "data"
    return (default, True, "") if default.is_dir() else (SUBSET, False, "")


DATA, FULL, BAD_DATA = _resolve()
# Modules that read $PASTURE_DATA at import, and the CLI in subprocesses, see the same root.
os.environ["PASTURE_DATA"] = str(DATA)

# Tests that need files outside the subset, marked from here because their files belong to
# others. Per file: test names, one parametrization ("name[id]"), or a prefix ending in "*".
# New tests can say it themselves with @pytest.mark.full_data.
FULL_DATA: dict[str, tuple[str, ...]] = {
    # Meta's tokenizer and the GGUF fixture that embeds it (Llama 2 Community License)
    "tests/test_cli.py": (
        "test_info_checkpoint",
        "test_truncated_checkpoints",
        "test_tokenizer_vocab_mismatch",
    ),
    "tests/interop/test_gguf.py": (
        "test_fixture_config_and_tensors",
        "test_embedded_tokenizer_equals_llamas_sentencepiece_model",
        "test_logits_match_transformers_gguf_converter",
        "test_f32_round_trip_is_exact",
        "test_truncated_file_is_an_error_naming_it",
        "test_tokenizer_size_must_match_the_model",
    ),
    "tests/data/test_tokenizer.py": (
        "test_meta_reference_encodings",
        "test_llama2c_export_is_byte_exact[llama-tokenizer*",
        "test_from_vocab_round_trips_through_bytes_and_save",
        "test_meta_tokenizer_matches_sentencepiece",
        "test_meta_round_trip",
        "test_tok512_from_llama2c",  # 1.7 MB of text from the full pretraining samples
    ),
    "tests/eval/test_lm_eval_crosscheck.py": (
        "test_same_requests_tokens_and_loglikelihoods[random-llama-vocab-*",
        "test_same_accuracies[random-llama-vocab-*",
        "test_pasture_acc_char_is_lm_evals_acc_norm[random-llama-vocab-*",
        "test_auto_tokenizer_differs_on_runs_of_spaces",
    ),
    # SIQA (no licence stated), MBPP (its reader wants all 974 problems), whole benchmark files
    "tests/eval/test_common_sense.py": (
        "test_each_task_runs_on_its_file[siqa]",
        "test_prompts_of_known_items",
    ),
    "tests/eval/test_run.py": ("test_broken_inputs_are_reported_and_the_rest_still_runs",),
    "tests/eval/test_code_tasks.py": (
        "test_mbpp_test_split_and_prompt",
        "test_mbpp_reference_code_passes_and_wrong_code_fails",
        "test_mbpp_task_on_the_contract",
        "test_humaneval_reads_the_published_file",
    ),
    "tests/eval/test_math.py": (
        "test_gsm8k_gold_answers",
        "test_math_gold_answers",
    ),
    "tests/eval/test_qa.py": ("test_nq_file",),
    "tests/eval/test_safety.py": (
        "test_crows_pairs_real_data",
        "test_truthfulqa_real_data",
    ),
    # the pretraining samples left out, and Meta's tokenizer
    "tests/train/test_train.py": ("test_trains_on_a_built_mixture",),
    "tests/data/test_arxiv.py": (
        "test_paper_cleaned",
        "test_escaped_percent_survives",
        "test_scifact_inputs_and_macros",
        "test_macros_with_arguments_expanded",
        "test_commented_out_headings_keep_the_body",
        "test_single_gzipped_tex_and_truncated_eprint",
    ),
    "tests/data/test_books.py": (
        "test_find_inputs_and_shards",
        "test_near_duplicate_pair_collapses",
        "test_variant_marker_of_3261",
        "test_latin1_books_are_decoded",
    ),
    "tests/data/test_build.py": (
        "test_full_build_report",
        "test_full_build_feeds_the_loader",
        "test_kill_and_rerun_is_byte_identical",
        "test_ray_executor_matches_local",
        "test_bad_inputs_are_skipped_with_their_reason",
    ),
    "tests/data/test_c4.py": (
        "test_read_both_variants",
        "test_real_c4_mostly_passes_and_lines_are_clean",
        "test_planted_bad_pages_are_removed_with_their_reason",
    ),
    "tests/data/test_ccnet.py": (
        "test_ngram_lm_ranks_wikipedia_above_garbage",
        "test_reference_classifier_learns_wikipedia_vs_web",
    ),
    "tests/data/test_commoncrawl.py": (
        "test_find_inputs_and_shards",
        "test_warc_excerpt_languages",
        "test_truncated_warc_keeps_records_before_the_cut",
        "test_ccnet_pipeline_dedup_and_schema",
    ),
    "tests/data/test_github.py": (
        "test_licenses_detected_and_gpl_repo_dropped",
        "test_binaries_notebooks_and_empty_files_dropped",
        "test_quality_filters_on_real_files",
        "test_apache_headers_stripped_from_python_fire",
        "test_c_license_comment_stripped_and_the_next_comment_kept",
        "test_exact_duplicates_dropped",
        "test_truncated_archive_keeps_what_was_read",
        "test_shards",
    ),
    "tests/data/test_hostile_inputs.py": (
        "test_links_out_of_the_input_root_are_not_followed",
        "test_one_bad_file_or_record_never_stops_a_build",
        "test_bad_out_folders_fail_in_one_line_before_any_work",
        "test_resume_redoes_exactly_the_shards_whose_inputs_changed",
    ),
    "tests/data/test_reference.py": (
        "test_bad_words_are_the_list_c4_used",
        "test_github_keeps_redpajamas_source_extensions",
        "test_c4_page_cap_and_url_dedup_as_tfds",
    ),
    "tests/data/test_shards.py": (
        "test_round_trip_with_llama_tokenizer",
        "test_encode_batch_matches_one_by_one",
        "test_truncated_bin_names_the_file",
    ),
    "tests/data/test_stackexchange.py": (
        "test_find_inputs_and_shards",
        "test_code_blocks_keep_their_text",
        "test_broken_xml_keeps_questions_before_it",
        "test_cut_file_keeps_questions_before_the_cut",
        "test_invalid_utf8",
        "test_empty_file",
    ),
    "tests/data/test_wikipedia.py": (
        "test_find_inputs_and_shards",
        "test_ids_unique_and_the_newest_revision_kept",
        "test_identical_dumps_kept_once_and_ranges_shard_apart",
        "test_japanese_is_out_of_the_paper_languages",
        "test_german_keeps_main_namespace_and_no_redirects",
        "test_truncated_ukrainian_dump_keeps_its_complete_pages",
        "test_plain_dump_cut_in_the_middle",
        "test_broken_xml",
        "test_invalid_utf8",
        "test_gzip_dump_reads_like_plain",
        "test_truncated_compressed_streams",
    ),
}


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return DATA


def pytest_configure(config: pytest.Config) -> None:
    if BAD_DATA:
        raise pytest.UsageError(BAD_DATA)
    config.addinivalue_line(
        "markers", "full_data: needs files outside tests/assets/data (skipped in a bare clone)"
    )
    config.addinivalue_line(
        "markers", "slow: takes more than a few seconds; `make test-fast` leaves it out"
    )


def _needs_full_data(item: pytest.Item) -> bool:
    if item.get_closest_marker("full_data"):
        return True
    path, _, name = item.nodeid.partition("::")
    for entry in FULL_DATA.get(path, ()):
        if entry.endswith("*") and name.startswith(entry[:-1]):
            return True
        if name == entry or name.startswith(entry + "["):
            return True
    return False


_FOLDED = pytest.StashKey[bool]()  # skipped here for want of the full data


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if FULL:
        return
    skip = pytest.mark.skip(reason=FULL_DATA_HINT)
    for item in items:
        if _needs_full_data(item):
            item.add_marker(skip)
            item.stash[_FOLDED] = True


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if not report.skipped:
        return report
    if item.stash.get(_FOLDED, False):
        # One location for every such skip, so `-ra` folds them into one summary line.
        report.longrepr = (str(Path(__file__)), None, f"Skipped: {FULL_DATA_HINT}")
    elif FULL:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        reason = str(reason).removeprefix("Skipped: ")
        report.outcome = "failed"
        report.longrepr = (
            f"skipped with the full data set at {DATA}, where nothing may skip: {reason}"
        )
    return report


def pytest_report_header(config: pytest.Config) -> str:
    if FULL:
        return f"test data: {DATA} (full set; a skipped test fails)"
    return f"test data: {SUBSET} (subset; tests that need the full set are skipped)"
