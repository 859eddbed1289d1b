"""Crash-consistency driver, run by ``test_crash.py`` as ``python -m
tests.archive.crash_driver WORKDIR`` from the backend directory.

For each operation (``ingest``: a new version of ``a.txt`` replaces the old one; ``reindex``:
a rebuild with another embedding model) and each N = 1, 2, ...: a copy of a two-file archive,
a child process that runs the operation and SIGKILLs itself just before its N-th Chroma write
call, then a fresh child that opens the archive and reports what readers see, before and after
the recovery that opening runs. It stops at the first N where the operation completes. The
report (JSON on standard output) is judged by the test.

Children are forked from this process, which imports Chroma but never opens a client, so each
child starts clean and cheap; the fake embedding model keeps torch out.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import app.archive.service as service
from app.archive.ingest import documents_from_records
from app.archive.service import Archive
from app.archive.store import ChromaStore
from app.config import Settings
from app.observability.metrics import Metrics

from .fakes import NEW_A, OLD, HashEmbedder, classify, on_chroma_writes

FIRST, SECOND = HashEmbedder("test/hash-one"), HashEmbedder("test/hash-two")
EMBEDDERS = {e.name: e for e in (FIRST, SECOND)}


@functools.cache
def settings(path: Path) -> Any:
    return Settings(archive_db_path=path, archive_collection="crash-test",
                    archive_chunk_tokens=24, archive_chunk_overlap_tokens=4).archive


def open_archive(path: Path, embedder: HashEmbedder) -> Archive:
    """As the server opens it (recovery included), without torch."""
    return Archive.open(settings(path), Metrics(), embedder=embedder)


def setup(path: Path) -> None:
    archive = open_archive(path, FIRST)
    for name, text in OLD.items():
        archive.ingest_bytes(name, text.encode())
    archive.close()


def operate(path: Path, operation: str, kill_at: int) -> None:
    archive = open_archive(path, FIRST if operation == "ingest" else SECOND)
    ChromaStore.max_batch_size = lambda self: 2  # type: ignore[method-assign]  # more steps
    calls = 0

    def hook(_method: str, _target: object) -> None:
        nonlocal calls
        calls += 1
        if calls == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    with on_chroma_writes(hook):
        if operation == "ingest":
            archive.ingest_bytes("a.txt", NEW_A.encode())
        else:
            archive.reindex()


def view(archive_path: Path) -> dict[str, Any]:
    """What a reader sees: the model, each file's revisions, which text, the listing."""
    store = ChromaStore(settings(archive_path), "unchecked", 1)
    model, records = store.all_records_unchecked()
    revisions: dict[str, set[str]] = {}
    for record in records:
        revisions.setdefault(str(record.metadata["file"]), set()).add(
            record.id.rsplit("-", 1)[0])
    texts = {d.file: classify(d.text) for d in documents_from_records(records)}
    store.close()
    report: dict[str, Any] = {
        "model": model, "texts": texts, "chunks": len(records),
        "revisions": {f: len(r) for f, r in sorted(revisions.items())},
    }
    if model in EMBEDDERS:
        archive = Archive(settings(archive_path), EMBEDDERS[model],
                          ChromaStore(settings(archive_path), model, 16), Metrics())
        report["listing"] = [f.file for f in archive.files().files]
        report["file_text"] = {f: classify(archive.file_text(f).text)
                               for f in report["listing"]}
        archive.close()
    return report


def inspect(path: Path, out: Path) -> None:
    before = view(path)
    model = before["model"] if before["model"] in EMBEDDERS else FIRST.name
    open_archive(path, EMBEDDERS[model]).close()  # the recovery a restart runs
    after = view(path)
    store = ChromaStore(settings(path), "unchecked", 1)
    client = store._client_now()
    collections = {c.name: c.count() for c in client.list_collections()}
    store.close()
    out.write_text(json.dumps({"before": before, "after": after, "collections": collections}))


def in_child(work: Callable[[], None]) -> str:
    """Run ``work`` in a forked child: ``done``, ``killed`` (SIGKILL) or ``failed``."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            work()
        except BaseException:  # noqa: BLE001 - the child reports any failure by its exit code
            traceback.print_exc()
            code = 3
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return "killed" if os.WTERMSIG(status) == signal.SIGKILL else "signal"
    return "done" if os.waitstatus_to_exitcode(status) == 0 else "failed"


def main(workdir: Path) -> None:
    import chromadb.api.rust  # noqa: F401 - imported once here, not in every child (0.2 s)

    service.set_threads = lambda threads: None  # type: ignore[assignment]  # no torch
    template = workdir / "template"
    if in_child(lambda: setup(template)) != "done":
        raise SystemExit("setup failed")
    report: dict[str, list[dict[str, Any]]] = {}
    for operation in ("ingest", "reindex"):
        steps = report[operation] = []
        for kill_at in range(1, 60):
            target = workdir / f"{operation}-{kill_at}"
            shutil.copytree(template, target)
            status = in_child(lambda t=target, o=operation, k=kill_at: operate(t, o, k))
            out = workdir / f"{operation}-{kill_at}.json"
            checked = in_child(lambda t=target, o=out: inspect(t, o))
            step = {"kill_at": kill_at, "status": status, "inspect": checked}
            if checked == "done":
                step |= json.loads(out.read_text())
            steps.append(step)
            shutil.rmtree(target, ignore_errors=True)
            if status != "killed":
                break
    print(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
