"""Crash consistency (issue 12, rows 3 and 9): a process SIGKILLed at any write step of an
ingest or a re-index leaves an archive that holds the old or the new version of each file,
never both and never neither, and that a restart cleans up (see ``crash_driver.py``)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import BACKEND

FILES = ["a.txt", "b.txt"]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    workdir = tmp_path_factory.mktemp("crash")
    done = subprocess.run([sys.executable, "-m", "tests.archive.crash_driver", str(workdir)],
                          cwd=BACKEND, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def consistent(view: dict, allowed: dict[str, set[str]]) -> None:
    assert sorted(view["texts"]) == FILES, view  # never neither
    assert view["revisions"] == dict.fromkeys(FILES, 1), view  # never both
    for file in FILES:
        assert view["texts"][file] in allowed[file], view
    assert view["listing"] == FILES, view
    assert view["file_text"] == view["texts"], view


@pytest.mark.parametrize("operation", ["ingest", "reindex"])
def test_a_kill_at_any_write_step_leaves_old_or_new(report: dict, operation: str) -> None:
    steps = report[operation]
    assert [s["status"] for s in steps[:-1]] == ["killed"] * (len(steps) - 1)
    assert steps[-1]["status"] == "done" and len(steps) >= 5, steps
    allowed = {"a.txt": {"old a.txt", "new a.txt"} if operation == "ingest" else {"old a.txt"},
               "b.txt": {"old b.txt"}}
    for step in steps:
        assert step["inspect"] == "done", step
        consistent(step["before"], allowed)  # what readers see right after the crash
        consistent(step["after"], allowed)  # and after the restart's recovery
        # Recovery never changes which version readers see, and leaves nothing behind: no
        # staged copy, no half-deleted version, no second collection.
        assert step["after"]["texts"] == step["before"]["texts"], step
        chunk_collections = {name: n for name, n in step["collections"].items()
                             if not name.endswith(".catalog")}
        assert list(chunk_collections.values()) == [step["after"]["chunks"]], step
    seen = {step["after"]["texts"]["a.txt"] for step in steps}
    if operation == "ingest":  # the kills fell on both sides of the commit point
        assert seen == {"old a.txt", "new a.txt"}
    else:
        models = [step["after"]["model"] for step in steps]
        assert models[0] == "test/hash-one" and models[-1] == "test/hash-two"
