"""``writer-assistant generations``: the generation records from the command line.

``list`` (newest first, filtered), ``show ID`` (the whole record as JSON), ``export`` (JSON
Lines, one record per line, for analysis) read the store at ``GENERATIONS_DB_PATH`` directly,
for the tenant the main ``--tenant`` option names; ``replay ID`` runs the generation again on
the configured model and says whether the output is byte-identical (exit 1 when not).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from app.config import Settings
from app.errors import GenerationNotFound, WriterAssistantError
from app.generations.records import MAX_OFFSET, GenerationRecord, RecordQuery
from app.generations.store import SqliteGenerationStore, dump_lines
from app.tenancy import current_tenant

app = typer.Typer(help="Generation records: list, show, replay, export.",
                  no_args_is_help=True)

#: Records read per query while exporting.
_EXPORT_PAGE = 500


def _fail(error: WriterAssistantError, code: int = 1) -> None:
    typer.echo(f"error ({error.code}): {error.message}", err=True)
    raise typer.Exit(code)


@contextmanager
def _store(ctx: typer.Context) -> Iterator[SqliteGenerationStore]:
    settings = Settings(**(ctx.obj or {})).generations
    path = settings.db_path
    if not path.exists():
        typer.echo(f"error: no generation store at {path} (GENERATIONS_DB_PATH)", err=True)
        raise typer.Exit(2)
    try:
        store = SqliteGenerationStore.open(path, half_life_s=settings.cache_half_life_s)
    except (OSError, sqlite3.Error) as error:
        typer.echo(f"error: cannot open {path}: {error}", err=True)
        raise typer.Exit(2) from error
    try:
        yield store
    finally:
        store.close()


def _get(store: SqliteGenerationStore, generation_id: str) -> GenerationRecord:
    record = store.get(current_tenant.get(), generation_id)
    if record is None:
        _fail(GenerationNotFound(f"No generation {generation_id} for tenant "
                                 f"{current_tenant.get()}."), 2)
    assert record is not None
    return record


Since = Annotated[datetime | None, typer.Option(help="ISO 8601 time; records from then on.")]
Until = Annotated[datetime | None, typer.Option(help="ISO 8601 time; records before then.")]
Story = Annotated[str | None, typer.Option("--story-id", help="Only this story's records.")]
Operation = Annotated[str | None, typer.Option(help="Only this operation's records.")]


@app.command("list")
def list_records(ctx: typer.Context, story_id: Story = None, operation: Operation = None,
                 since: Since = None, until: Until = None,
                 limit: Annotated[int, typer.Option(min=1, max=500)] = 20,
                 offset: Annotated[int, typer.Option(min=0, max=MAX_OFFSET)] = 0) -> None:
    """One line per record, newest first: id, time, operation, story, seed, tokens, text."""
    query = RecordQuery(story_id=story_id, operation=operation, since=since, until=until,
                        limit=limit, offset=offset)
    with _store(ctx) as store:
        records, total = store.find(current_tenant.get(), query)
    for record in records:
        preview = record.text[:60].replace("\n", " ")
        typer.echo(f"{record.id}  {record.created_at:%Y-%m-%d %H:%M:%S}  "
                   f"{record.operation:<18} {record.story_id or '-':<12} "
                   f"seed {record.sampling.seed:<10} {record.usage.completion_tokens:>5} tok  "
                   f"{preview}")
    typer.echo(f"{len(records)} of {total} records", err=True)


@app.command()
def show(ctx: typer.Context,
         generation_id: Annotated[str, typer.Argument(help="A generation_id.")]) -> None:
    """The whole record as JSON."""
    with _store(ctx) as store:
        record = _get(store, generation_id)
    typer.echo(record.model_dump_json(indent=1))


@app.command()
def export(ctx: typer.Context, story_id: Story = None, operation: Operation = None,
           since: Since = None, until: Until = None,
           out: Annotated[Path | None, typer.Option(
               help="Write to this file (default: standard output).", dir_okay=False)] = None,
           ) -> None:
    """Every matching record as JSON Lines (one JSON object per line), newest first."""
    target = out.open("w", encoding="utf-8") if out is not None else sys.stdout
    count = 0
    try:
        with _store(ctx) as store:
            offset = 0
            while True:
                records, _total = store.find(current_tenant.get(), RecordQuery(
                    story_id=story_id, operation=operation, since=since, until=until,
                    limit=_EXPORT_PAGE, offset=offset))
                for line in dump_lines(records):
                    target.write(line + "\n")
                count += len(records)
                if len(records) < _EXPORT_PAGE:
                    break
                offset += _EXPORT_PAGE
    finally:
        if out is not None:
            target.close()
    typer.echo(f"exported {count} records", err=True)


@app.command()
def replay(ctx: typer.Context,
           generation_id: Annotated[str, typer.Argument(help="A generation_id.")],
           request_file: Annotated[Path | None, typer.Option(
               "--request", exists=True, dir_okay=False,
               help="The original request body (JSON), when the record did not store it.")]
           = None) -> None:
    """Run the generation again with its recorded request, prompt and sampling on the
    configured model; print the replay's text and whether it is byte-identical (exit 1 when
    it is not)."""
    from app import bootstrap
    from app.agents.registry import REGISTRY
    from app.generations.replay import replay as run_replay

    settings = Settings(**(ctx.obj or {}))
    given: dict[str, Any] | None = None
    if request_file is not None:
        try:
            given = json.loads(request_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            typer.echo(f"error: cannot read {request_file} as JSON: {error}", err=True)
            raise typer.Exit(2) from error

    async def work() -> Any:
        async with bootstrap.services_for_cli(settings) as services:
            runner = services.require_runner()
            assert runner.recorder is not None
            record = await runner.recorder.get(current_tenant.get(), generation_id)
            if record is None:
                raise GenerationNotFound(f"No generation {generation_id}.")
            return record, await run_replay(runner, REGISTRY, record, given)

    try:
        record, outcome = asyncio.run(work())
    except WriterAssistantError as error:
        _fail(error, 2)
    typer.echo(outcome.text)
    verdict = "identical" if outcome.identical else \
        f"DIFFERENT from character {outcome.first_difference}"
    typer.echo(f"replay {outcome.generation_id} of {record.id}: {verdict} "
               f"(prompt identical: {outcome.prompt_identical}, model identical: "
               f"{outcome.model_identical})", err=True)
    if not outcome.identical:
        raise typer.Exit(1)
