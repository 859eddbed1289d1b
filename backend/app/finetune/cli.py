"""``writer-assistant adapters``: the LoRA adapters served beside the base model.

``add NAME PATH`` registers a GGUF LoRA adapter file or a fine-tune's directory (its
``adapter.gguf`` and ``training.json``) in ``ADAPTERS_DIR`` after checking it against the base
model the server loads (``MODEL_PATH``, default the embedded model); ``remove NAME`` and
``list`` (``--json`` for the entries and training records). Exit code 2: bad input (a bad or
taken name, no adapter at the path, an adapter for another base model).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from app.config import Settings
from app.errors import WriterAssistantError
from app.finetune.registry import AdapterRegistry, entry_json

app = typer.Typer(help="LoRA adapters served beside the base model: add, remove, list.",
                  no_args_is_help=True)


def _registry(ctx: typer.Context) -> tuple[Settings, AdapterRegistry]:
    settings = Settings(**(ctx.obj or {}))
    return settings, AdapterRegistry(settings.adapters.dir)


def _fail(error: WriterAssistantError, code: int = 2) -> None:
    typer.echo(f"error ({error.code}): {error.message}", err=True)
    raise typer.Exit(code)


@app.command()
def add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Adapter name (a slug; not 'base'): what a "
                                             "request's model field takes.")],
    path: Annotated[Path, typer.Argument(help="A GGUF LoRA adapter file, or a fine-tune's "
                                              "directory (FINETUNE_DIR/adapters/NAME).")],
    replace: Annotated[bool, typer.Option(help="Replace an adapter of that name.")] = False,
) -> None:
    """Register an adapter (copied into ADAPTERS_DIR/NAME) after checking that it was made
    for the served base model. Exit code 2: refused."""
    from app.llm.llama import default_model_path

    settings, registry = _registry(ctx)
    try:
        adapter = registry.add(name, path, settings.model.path or default_model_path(),
                               replace=replace)
    except WriterAssistantError as error:
        _fail(error)
    record = adapter.record
    trained = (f", {record.steps} steps, train loss {record.train_loss:.3f}"
               if record is not None and record.train_loss is not None else "")
    typer.echo(f"registered {adapter.name}: {adapter.entry.size_bytes} bytes, sha256 "
               f"{adapter.entry.sha256[:12]}{trained}")
    typer.echo(f"use it with \"model\": \"{adapter.name}\" in a request")


@app.command()
def remove(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Adapter name.")],
) -> None:
    """Unregister an adapter (its directory in ADAPTERS_DIR is deleted). Exit code 2: no
    adapter by that name."""
    _settings, registry = _registry(ctx)
    try:
        registry.remove(name)
    except WriterAssistantError as error:
        _fail(error)
    typer.echo(f"removed {name}")


@app.command("list")
def list_adapters(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Entries and training records as "
                                                         "JSON.")] = False,
) -> None:
    """The registered adapters: name, size, SHA-256, steps and losses."""
    _settings, registry = _registry(ctx)
    adapters = registry.registered()
    if as_json:
        typer.echo("[" + ",\n".join(entry_json(a) for a in adapters) + "]")
        return
    if not adapters:
        typer.echo(f"no adapters in {registry.directory} (ADAPTERS_DIR)")
        return
    for adapter in adapters:
        entry, record = adapter.entry, adapter.record
        trained = "no training record"
        if record is not None:
            losses = json.dumps({"train": record.train_loss, "validation":
                                 record.validation_loss})
            trained = f"{record.steps} steps, loss {losses}"
        typer.echo(f"{entry.name}\t{entry.size_bytes} bytes\tsha256 {entry.sha256[:12]}\t"
                   f"{entry.created_at:%Y-%m-%d %H:%M}\t{trained}")
