"""tests/assets/data, the subset a bare clone tests with: every file listed in its manifest
with size, SHA-256, licence and source; small; and, where the full set is present, each file
is the full set's file or its first N records, as make_data_subset.py writes them. And the
conftest's rules, in a throwaway repository: on the subset, tests that need the full set skip
as one summary line; with the full set, a skip fails; a wrong $PASTURE_DATA is an error."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ASSETS = Path(__file__).resolve().parents[1] / "assets"
SUBSET = ASSETS / "data"
ROW = re.compile(
    r"^\| `([^`]+)` \| (\d+) \| ([0-9a-f]{64}) \| (copy|first \d+) \| ([^|]+) \| ([^|]+) \|$"
)


def manifest() -> dict[str, tuple[int, str, str]]:
    rows = {}
    for line in (SUBSET / "MANIFEST.md").read_text().splitlines():
        if match := ROW.match(line):
            rel, size, digest, taken, licence, source = match.groups()
            assert licence.strip() and source.strip(), rel
            rows[rel] = (int(size), digest, taken)
    return rows


def test_every_file_is_in_the_manifest_with_its_size_and_hash() -> None:
    files = {p.relative_to(SUBSET).as_posix() for p in SUBSET.rglob("*") if p.is_file()} - {
        "MANIFEST.md"
    }
    rows = manifest()
    assert set(rows) == files
    for rel, (size, digest, _) in rows.items():
        data = (SUBSET / rel).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (size, digest), rel


def test_the_subset_stays_small() -> None:
    total = sum(p.stat().st_size for p in SUBSET.rglob("*") if p.is_file())
    assert total < 5_000_000


@pytest.mark.full_data
def test_each_file_is_the_full_sets_file_or_its_first_records(shared_data: Path) -> None:
    spec = importlib.util.spec_from_file_location(
        "make_data_subset", ASSETS / "make_data_subset.py"
    )
    assert spec and spec.loader
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    for rel, (_, _, taken) in manifest().items():
        full = shared_data / rel
        expected = full.read_bytes() if taken == "copy" else script.head(full, int(taken[6:]))
        assert (SUBSET / rel).read_bytes() == expected, rel


MINI_TESTS = """
import pytest

@pytest.mark.full_data
def test_needs_the_full_set(): pass

@pytest.mark.full_data
def test_needs_it_too(): pass

def test_skips(): pytest.skip("no GPU here")

def test_plain(): pass
"""


def _pytest(root: Path, data: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PASTURE_DATA"}
    if data is not None:
        env["PASTURE_DATA"] = data
    cmd = [sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider", "tests"]
    return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_conftest_skips_on_the_subset_and_fails_skips_with_the_full_set(tmp_path: Path) -> None:
    root = tmp_path / "clone"  # no ../shared/data beside it
    (root / "tests" / "assets" / "data").mkdir(parents=True)
    shutil.copy(Path(__file__).resolve().parents[1] / "conftest.py", root / "tests")
    (root / "tests" / "test_mini.py").write_text(MINI_TESTS)

    bare = _pytest(root, None)
    assert bare.returncode == 0, bare.stdout
    lines = [x for x in bare.stdout.splitlines() if "needs the full data set" in x]
    assert lines == [
        "SKIPPED [2] tests/conftest.py: needs the full data set: set "
        "PASTURE_DATA=/path/to/shared/data (or put it at ../shared/data) to run them"
    ]
    assert "1 passed, 3 skipped" in bare.stdout

    full = _pytest(root, str(tmp_path))
    assert full.returncode == 1, full.stdout
    assert "FAILED tests/test_mini.py::test_skips - skipped with the full data set" in full.stdout
    assert "1 failed, 3 passed" in full.stdout

    wrong = _pytest(root, str(tmp_path / "missing"))
    assert wrong.returncode == 4
    assert f"PASTURE_DATA={tmp_path / 'missing'} is not a folder" in wrong.stderr
