"""The `writer-assistant` command line on a temporary archive."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from app.cli import app

from .test_store import RECIPES, STORY


def run(db: Path, *args: str):
    return CliRunner().invoke(app, ["--db-path", str(db), *args])


def test_ingest_search_files_delete_reindex(tmp_path: Path) -> None:
    texts = tmp_path / "texts"
    (texts / "nested").mkdir(parents=True)
    (texts / "lighthouse.txt").write_text(STORY)
    (texts / "nested" / "recipes.md").write_text(RECIPES)
    (texts / "cover.png").write_bytes(b"\x89PNG")  # not a supported extension: not collected
    db = tmp_path / "archive"

    result = run(db, "ingest", str(texts))
    assert result.exit_code == 0, result.output
    assert "lighthouse.txt: " in result.output and "2 chapters" in result.output
    assert "2 files archived" in result.output
    assert "chunk" in result.stderr  # the progress bar

    again = run(db, "ingest", str(texts / "lighthouse.txt"))
    assert "unchanged" in again.output

    found = run(db, "search", "a lantern in the storm", "-k", "1")
    assert found.exit_code == 0 and "CHAPTER 2. The Storm" in found.output

    listing = run(db, "files")
    assert "lighthouse.txt\tThe Lighthouse" in listing.output
    assert "nested/recipes.md\t" in listing.output
    stats = json.loads(run(db, "stats").output)
    assert stats["files"] == 2 and stats["mode"] == "embedded"

    rebuilt = run(db, "reindex")
    assert rebuilt.exit_code == 0 and "re-indexed 2 files" in rebuilt.output
    # A file found in a folder is named by its path there.
    assert run(db, "delete", "nested/recipes.md").output.startswith("deleted nested/recipes.md")
    gone = run(db, "delete", "nested/recipes.md")
    assert gone.exit_code == 1 and "archive_file_not_found" in gone.stderr


def test_ingest_reports_bad_files_and_missing_paths(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "good.txt").write_text("A short story about a fox.")
    result = run(tmp_path / "db", "ingest", str(tmp_path / "empty.txt"),
                 str(tmp_path / "good.txt"))
    assert result.exit_code == 1
    assert "skipped" in result.stderr and "empty" in result.stderr
    assert "good.txt: 1 chunks" in result.output
    missing = run(tmp_path / "db", "ingest", str(tmp_path / "nope.txt"))
    assert missing.exit_code == 2 and "does not exist" in missing.stderr
