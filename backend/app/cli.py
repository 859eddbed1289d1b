"""``writer-assistant``: the command line (a Typer app; one command per function).

``serve`` runs the HTTP service. Archive commands: ``ingest PATH...`` (with a progress bar), ``reindex``, ``search``, ``files``,
``delete``, ``stats``. They read the same settings as the server (environment and ``.env``);
``--db-path``, ``--chroma-host`` and ``--chroma-port`` override the store's location.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from tqdm import tqdm

from app.config import Settings
from app.errors import WriterAssistantError

app = typer.Typer(help="Writer Assistant: command-line tools.", no_args_is_help=True,
                  add_completion=False)


@app.callback()
def main(
    ctx: typer.Context,
    db_path: Annotated[Path | None, typer.Option(help="Archive directory (ARCHIVE_DB_PATH).")]
    = None,
    chroma_host: Annotated[str | None, typer.Option(help="Chroma server host (CHROMA_HOST).")]
    = None,
    chroma_port: Annotated[int | None, typer.Option(help="Chroma server port (CHROMA_PORT).")]
    = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at INFO.")] = False,
) -> None:
    """Settings come from the environment and .env; these options override them."""
    if ctx.invoked_subcommand != "serve":  # the service configures its own logging
        logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s")
    overrides: dict[str, Any] = {"archive_db_path": db_path, "chroma_host": chroma_host,
                                 "chroma_port": chroma_port}
    ctx.obj = {k: v for k, v in overrides.items() if v is not None}


def _archive(ctx: typer.Context, threads: int | None = None) -> Any:
    from app.archive.service import Archive  # heavy imports (torch) only for archive commands

    overrides = ctx.obj | ({"embedding_threads": threads} if threads else {})
    try:
        return Archive.open(Settings(**overrides))
    except WriterAssistantError as error:
        _fail(error)


def _fail(error: WriterAssistantError) -> None:
    typer.echo(f"error ({error.code}): {error.message}", err=True)
    raise typer.Exit(1)


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
) -> None:
    """Run the HTTP service (drains running generations on SIGTERM, then exits 0)."""
    from app.server import run

    run(Settings(**ctx.obj), host=host, port=port)


@app.command()
def ingest(
    ctx: typer.Context,
    paths: Annotated[list[Path], typer.Argument(help="Files or directories (searched "
                                                "recursively for .txt .md .docx .html).")],
    threads: Annotated[int | None, typer.Option(
        min=1, help="Embedding threads (default EMBEDDING_THREADS); all cores is fastest on "
        "an idle machine.")] = None,
) -> None:
    """Archive files, replacing earlier versions of the same file names."""
    from app.archive.documents import parse_document
    from app.archive.ingest import collect_paths

    try:
        files = collect_paths(paths)
    except FileNotFoundError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    if not files:
        typer.echo("error: no .txt, .md, .docx or .html files found", err=True)
        raise typer.Exit(2)
    archive = _archive(ctx, threads)
    failed, work = 0, []
    for path in files:
        try:
            document = parse_document(path.name, path.read_bytes())
            work.append((path, document, archive.prepare(document)))
        except WriterAssistantError as error:
            failed += 1
            typer.echo(f"skipped {path}: {error.message}", err=True)
    total = sum(len(p.ids) for _, _, p in work)
    results = []
    with tqdm(total=total, unit="chunk", desc="ingest", file=sys.stderr) as bar:
        for path, document, prepared in work:
            bar.set_postfix_str(path.name)
            try:
                results.append(archive.ingest_document(document, bar.update, prepared))
            except WriterAssistantError as error:
                bar.close()
                _fail(error)
    for result in results:
        what = "unchanged" if result.unchanged else f"replaced {result.replaced_chunks}"
        typer.echo(f"{result.file}: {result.chunks} chunks, {result.chapters} chapters, "
                   f"{result.chars} characters ({what}) in {result.seconds:.1f} s")
    typer.echo(f"{len(results)} files archived in {archive.store.location}"
               + (f", {failed} skipped" if failed else ""))
    if failed:
        raise typer.Exit(1)


@app.command()
def reindex(
    ctx: typer.Context,
    threads: Annotated[int | None, typer.Option(
        min=1, help="Embedding threads (default EMBEDDING_THREADS).")] = None,
) -> None:
    """Rebuild the archive collection with the configured embedding model (after changing
    EMBEDDING_MODEL or the chunk settings)."""
    archive = _archive(ctx, threads)
    bar = tqdm(unit="chunk", desc="reindex", file=sys.stderr)
    try:
        result = archive.reindex(progress=bar.update, on_total=lambda n: bar.reset(total=n))
    except WriterAssistantError as error:
        bar.close()
        _fail(error)
    bar.close()
    typer.echo(f"re-indexed {result.files} files ({result.chunks} chunks) with "
               f"{result.embedding_model} (was {result.previous_model}) in {result.seconds:.1f} s")


@app.command()
def search(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(help="What to look for.")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, max=50)] = 5,
    file: Annotated[str | None, typer.Option(help="Only this archived file.")] = None,
    chapter: Annotated[str | None, typer.Option(help="Only this chapter (title).")] = None,
) -> None:
    """Print the passages closest to QUERY."""
    from app.schemas.archive import ArchiveFilters

    archive = _archive(ctx)
    try:
        passages = archive.search(query, top_k, ArchiveFilters(file=file, chapter=chapter))
    except WriterAssistantError as error:
        _fail(error)
    for p in passages:
        typer.echo(f"[{p.score:.3f}] {p.file} | {p.chapter or '(front matter)'} | "
                   f"chunk {p.chunk_index}\n{p.text.strip()}\n")


@app.command()
def files(ctx: typer.Context) -> None:
    """List the archived files."""
    archive = _archive(ctx)
    try:
        listing = archive.files()
    except WriterAssistantError as error:
        _fail(error)
    for info in listing.files:
        typer.echo(f"{info.file}\t{info.title}\t{info.chunks} chunks\t{len(info.chapters)} "
                   f"chapters\t{info.chars} characters")


@app.command()
def delete(ctx: typer.Context, file: Annotated[str, typer.Argument(help="Archived file name.")]
           ) -> None:
    """Remove a file from the archive."""
    archive = _archive(ctx)
    try:
        result = archive.delete_file(file)
    except WriterAssistantError as error:
        _fail(error)
    typer.echo(f"deleted {result.file} ({result.deleted_chunks} chunks)")


@app.command()
def stats(ctx: typer.Context) -> None:
    """Print the archive's size and configuration as JSON."""
    archive = _archive(ctx)
    try:
        typer.echo(json.dumps(archive.stats().model_dump(), indent=2))
    except WriterAssistantError as error:
        _fail(error)
