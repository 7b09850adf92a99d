"""Running pasture's CLI in-process from tests."""

from __future__ import annotations

import pytest

from pasture.cli import main


def cli_error(argv: list[str], capsys: pytest.CaptureFixture, *fragments: str) -> str:
    """Run ``pasture ARGV``; it must exit 2 with one ``pasture: error:`` line holding each
    fragment. Returns the line."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("pasture: error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err
