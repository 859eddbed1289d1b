"""``writer-assistant``: the command line (a Typer app; one command per function).

``serve`` runs the HTTP service. Model commands: ``count-tokens`` (the served model's
tokenizer), ``preview`` (the assembly report or exact prompt for a context file, without
generating) and ``generate`` (streams the answer for a context file to the terminal); they run
the same :class:`app.agents.runner.AgentRunner` as the service. Archive commands: ``ingest
PATH...`` (with a progress bar), ``reindex``, ``search``, ``files``, ``delete``, ``stats``.
``generations list|show|replay|export``: the generation records (:mod:`app.generations.cli`).
The author's own model: ``dataset`` (a training set from the voice files or paths) and
``finetune`` (a LoRA adapter of the embedded model, exported as a GGUF LoRA adapter);
``adapters add|remove|list``: the adapters served beside the base (:mod:`app.finetune.cli`).
All read the same settings as the server (environment and ``.env``); ``--db-path``,
``--chroma-host`` and ``--chroma-port`` override the store's location.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from tqdm import tqdm

from app.config import Settings
from app.errors import ArchiveUnavailable, WriterAssistantError
from app.finetune.cli import app as adapters_app
from app.generations.cli import app as generations_app
from app.tenancy import LOCAL_TENANT, current_tenant

if TYPE_CHECKING:
    from pydantic import BaseModel

    from app.agents.runner import AgentRunner
    from app.agents.spec import AgentSpec
    from app.context.report import AssemblyReport


T = TypeVar("T")

app = typer.Typer(help="Writer Assistant: command-line tools.", no_args_is_help=True,
                  add_completion=False)


app.add_typer(generations_app, name="generations")
app.add_typer(adapters_app, name="adapters")


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
    tenant: Annotated[str, typer.Option(help="Tenant whose archive the archive commands use "
                                             "(an API_KEYS tenant; default: local use).")]
    = LOCAL_TENANT,
) -> None:
    """Settings come from the environment and .env; these options override them."""
    if ctx.invoked_subcommand != "serve":  # the service configures its own logging
        logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s")
    overrides: dict[str, Any] = {"archive_db_path": db_path, "chroma_host": chroma_host,
                                 "chroma_port": chroma_port}
    ctx.obj = {k: v for k, v in overrides.items() if v is not None}
    current_tenant.set(tenant)


def _archive(ctx: typer.Context, threads: int | None = None) -> Any:
    from app.archive.service import Archive  # heavy imports (torch) only for archive commands
    from app.observability.metrics import Metrics

    overrides = ctx.obj | ({"embedding_threads": threads} if threads else {})
    try:
        archive = Archive.open(Settings(**overrides).archive, Metrics())
    except WriterAssistantError as error:
        _fail(error)
    ctx.call_on_close(archive.close)  # when the command ends, whatever way
    try:
        archive.store.check()  # e.g. the server holds the embedded archive: say so now
    except ArchiveUnavailable as error:
        _fail(error)
    except WriterAssistantError:  # another model's archive: reindex is for that
        pass
    return archive.for_tenant(current_tenant.get())


def _fail(error: WriterAssistantError, exit_code: int = 1) -> None:
    typer.echo(f"error ({error.code}): {error.message}", err=True)
    raise typer.Exit(exit_code)


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
    voice: Annotated[bool, typer.Option(
        "--voice", help="The files are your own writing: they make your voice profile "
        "(GET /api/v1/voice) and are never retrieved as story.")] = False,
) -> None:
    """Archive files, replacing earlier versions of the same file names. A file found in a
    directory is named by its path relative to that directory (drafts/notes.md), a file given
    by itself by its base name."""
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
    named: dict[str, Path] = {}
    for path, name in files:
        try:
            document = parse_document(
                name, path.read_bytes(),
                max_expanded_bytes=archive.settings.max_expanded_bytes)
            if voice:
                document = dataclasses.replace(document, voice=True)
        except WriterAssistantError as error:
            failed += 1
            typer.echo(f"skipped {path}: {error.message}", err=True)
            continue
        if document.file in named:
            failed += 1
            typer.echo(f"skipped {path}: {named[document.file]} is archived as "
                       f"{document.file!r} too; ingest the folder that holds both, or one "
                       "at a time", err=True)
            continue
        named[document.file] = path
        try:
            work.append((document, archive.prepare(document)))
        except WriterAssistantError as error:
            failed += 1
            typer.echo(f"skipped {path}: {error.message}", err=True)
    total = sum(len(p.ids) for _, p in work)
    results = []
    with tqdm(total=total, unit="chunk", desc="ingest", file=sys.stderr) as bar:
        for document, prepared in work:
            bar.set_postfix_str(document.file)
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


# --- model commands ---------------------------------------------------------------------------

#: The operation a context file is for when neither the file nor --operation names one.
DEFAULT_OPERATION = "generate-chapter"

ContextFile = Annotated[Path, typer.Argument(
    help="A JSON request body (e.g. from backend/examples/alice_context.py), or "
    '{"operation": ..., "request": {...}} as /api/v1/context/preview takes.',
    exists=True, dir_okay=False, readable=True)]
OperationOption = Annotated[str | None, typer.Option(
    "--operation", "-o", help="Agent operation (endpoint name), e.g. generate-chapter, "
    f"editor-review. Default: the file's, else {DEFAULT_OPERATION}.")]
ArchiveOption = Annotated[bool | None, typer.Option(
    "--archive/--no-archive", help="Add archive passages to the context as the server does "
    "(loads the embedding model). Default: ARCHIVE_ENABLED.")]


def _read_context(path: Path, operation: str | None,
                  overrides: dict[str, Any] | None = None) -> tuple[AgentSpec, BaseModel]:
    """The agent spec and validated request of a context file (exit 2 when unusable)."""
    from pydantic import ValidationError

    from app.agents.registry import REGISTRY

    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        typer.echo(f"error: cannot read {path} as JSON: {error}", err=True)
        raise typer.Exit(2) from error
    if isinstance(body, dict) and "request" in body and "structured_context" not in body:
        operation = operation or body.get("operation")
        body = body["request"]
    operation = operation or DEFAULT_OPERATION
    if operation not in REGISTRY:
        typer.echo(f"error: unknown operation {operation!r}; one of: {', '.join(REGISTRY)}",
                   err=True)
        raise typer.Exit(2)
    if not isinstance(body, dict):
        typer.echo(f"error: {path} holds no JSON object", err=True)
        raise typer.Exit(2)
    try:
        request = REGISTRY[operation].request_model.model_validate(
            {**body, **(overrides or {})})
    except ValidationError as error:
        for problem in error.errors()[:10]:
            where = ".".join(str(part) for part in problem["loc"]) or "body"
            typer.echo(f"error: {where}: {problem['msg']}", err=True)
        raise typer.Exit(2) from error
    return REGISTRY[operation], request


def _with_runner(settings: Settings, archive: bool | None,
                 work: Callable[[AgentRunner], Awaitable[T]]) -> T:
    """Run ``work`` on the runner the service would build (summary cache, distiller and, when
    on, archive retrieval) over the model :func:`app.bootstrap.open_generator` opens once,
    weights loading on the first generation (:func:`app.bootstrap.services_for_cli`).
    Everything opened is closed when ``work`` ends or fails; a domain error is printed with
    its code (exit 1)."""
    from app import bootstrap

    if archive is not None:
        settings = settings.replace(archive_enabled=archive)

    async def run() -> T:
        async with bootstrap.services_for_cli(settings) as services:
            if services.archive.status == "error":
                typer.echo(f"warning: archive unavailable ({services.archive.error}); going on "
                           "without archive passages", err=True)
            return await work(services.require_runner())

    return _run_async(run())


def _run_async(work: Any) -> Any:
    """Run a coroutine; a domain error is printed with its code (exit 1)."""
    try:
        return asyncio.run(work)
    except WriterAssistantError as error:
        _fail(error)


async def _progress(data: dict[str, object]) -> None:
    """Print a distillation step (the runner's progress callback)."""
    typer.echo(f"distilling {data['step']}/{data['steps']}: {data['label']} "
               f"({data['layer']}, level {data['level']})", err=True)


def _report_table(report: AssemblyReport) -> str:
    """The assembly report as aligned text: the window, each layer, each element's fate."""
    free = report.window_tokens - report.prompt_tokens - report.max_tokens
    lines = [
        f"agent {report.agent} | model {report.model} | n_ctx {report.n_ctx}",
        (f"window {report.window_tokens} tokens = prompt {report.prompt_tokens} + max_tokens "
         f"{report.max_tokens} + free {free} (buffer {report.buffer_tokens}); fixed part "
         f"{report.fixed_tokens}"),
        "",
        f"{'layer':<14}{'share':>8}{'budget':>8}{'requested':>11}{'used':>8}",
    ]
    for layer in report.layers:
        lines.append(f"{layer.layer.value:<14}{layer.share_tokens:>8}{layer.budget_tokens:>8}"
                     f"{layer.requested_tokens:>11}{layer.used_tokens:>8}")
    lines += ["", (f"{'element':<28}{'layer':<14}{'priority':<9}{'tokens':>7}{'kept':>7}  "
                   "fate: reason")]
    for element in report.elements:
        fate = element.fate.value
        if element.boundary:
            fate += f" at a {element.boundary}"
        if element.distilled_into:
            fate += f" into {element.distilled_into}"
        lines.append(f"{element.id[:27]:<28}{element.layer.value:<14}"
                     f"{element.priority.value:<9}{element.tokens:>7}{element.kept_tokens:>7}  "
                     f"{fate}: {element.reason}")
    for summary in report.summaries:
        lines.append(f"summary {summary.id}: {summary.strategy}, level {summary.level}, "
                     f"{summary.source_tokens} -> {summary.tokens} tokens ({summary.label})")
    stats = report.distillation
    if stats.llm_calls or stats.cache_hits:
        lines.append(f"distillation: {stats.llm_calls} model calls, {stats.cache_hits} from "
                     f"the cache, {stats.seconds:.1f} s")
    return "\n".join(lines)


def _usage_line(done: dict[str, Any]) -> str:
    """A ``done`` event's usage (tokens) and timings (milliseconds) in one line, with its
    generation record (id, seed, cache) when there is one."""
    usage, t = done["usage"], done["timings"]
    record = (f"{done['generation_id']} seed {done['seed']} cache {done['cache']} | "
              if done.get("generation_id") else "")
    return (f"{record}finish_reason {done['finish_reason']} | prompt {usage['prompt_tokens']} "
            f"+ completion {usage['completion_tokens']} tokens | queue {t['queue_ms']:.0f} ms, "
            f"first token {t['time_to_first_token_ms']:.0f} ms, total {t['total_ms']:.0f} ms, "
            f"{t['decode_tokens_per_s']:.1f} tokens/s")


@app.command("count-tokens")
def count_tokens(
    texts: Annotated[list[str] | None, typer.Argument(
        help="Texts to count; with neither texts nor --file, standard input.")] = None,
    file: Annotated[list[Path] | None, typer.Option(
        "--file", "-f", exists=True, dir_okay=False, readable=True,
        help="A UTF-8 text file to count (repeatable).")] = None,
) -> None:
    """Count tokens with the served model's own tokenizer (only its vocabulary is loaded:
    MODEL_PATH, or LLM_TOKENIZER_PATH with LLM_BACKEND=openai; default the embedded GGUF).

    Prints one line per input, "<tokens>\\t<source>", and a total for several."""
    from app.llm.llama import GgufTokenizer, default_model_path

    settings = Settings()
    inputs = [(f"text {i}", text) for i, text in enumerate(texts or [], start=1)]
    for path in file or []:
        inputs.append((str(path), path.read_text(encoding="utf-8")))
    if not inputs:
        inputs.append(("stdin", sys.stdin.read()))
    model = settings.model
    path = (model.remote.tokenizer_path if model.backend == "openai" else
            model.path) or default_model_path()
    try:
        tokenizer = GgufTokenizer.load(path)
    except WriterAssistantError as error:
        _fail(error)
    counts = [(source, tokenizer.count_tokens(text)) for source, text in inputs]
    for source, count in counts:
        typer.echo(f"{count}\t{source}")
    if len(counts) > 1:
        typer.echo(f"{sum(count for _, count in counts)}\ttotal ({tokenizer.name})")


@app.command()
def preview(
    ctx: typer.Context,
    context_file: ContextFile,
    operation: OperationOption = None,
    prompt: Annotated[bool, typer.Option(
        "--prompt", help="Print the exact prompt (chat template applied) instead of the "
        "report.")] = False,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print what /api/v1/context/preview answers: operation, prompt, "
        "messages, context_metadata.")] = False,
    archive: ArchiveOption = None,
) -> None:
    """Assemble the prompt an operation would send for a context file and print the assembly
    report (what was kept, trimmed, distilled or dropped, and why), without generating.

    Counting needs only the model's vocabulary; the weights are loaded only when the context
    overflows and must be distilled (summaries come from, and go to, SUMMARY_CACHE_DIR)."""
    spec, request = _read_context(context_file, operation)

    async def work(runner: AgentRunner) -> tuple[str, Any]:
        prepared = await runner.preview(spec, request, progress=_progress)
        return runner.generator.render_prompt(prepared.prompt.messages), prepared

    rendered, prepared = _with_runner(Settings(**ctx.obj), archive, work)
    report = prepared.prompt.report
    if as_json:
        typer.echo(json.dumps({
            "operation": spec.operation, "prompt": rendered,
            "messages": [{"role": m.role, "content": m.content}
                         for m in prepared.prompt.messages],
            "context_metadata": report.model_dump(mode="json"),
        }, ensure_ascii=False, indent=1))
    elif prompt:
        typer.echo(rendered, nl=False)
    else:
        typer.echo(_report_table(report))


@app.command()
def generate(
    ctx: typer.Context,
    context_file: ContextFile,
    operation: OperationOption = None,
    max_tokens: Annotated[int | None, typer.Option(
        min=1, help="Completion tokens (default: the agent's, else LLM_MAX_TOKENS).")] = None,
    temperature: Annotated[float | None, typer.Option(min=0.0, max=2.0)] = None,
    seed: Annotated[int | None, typer.Option(help="Sampling seed (default: random).")] = None,
    archive: ArchiveOption = None,
) -> None:
    """Generate the answer for a context file: chapter operations stream it to standard
    output token by token, JSON agents print their validated JSON; usage and timings go to
    standard error."""
    overrides = {k: v for k, v in {"max_tokens": max_tokens, "temperature": temperature,
                                   "seed": seed}.items() if v is not None}
    spec, request = _read_context(context_file, operation, overrides)

    async def work(runner: AgentRunner) -> dict[str, Any]:
        from app.agents.events import DONE, META, PROGRESS, TOKEN, done_fields, stream_events

        if spec.output_model is not None:  # JSON agents print their validated JSON
            result = await runner.run(spec, request)
            output = result.output.model_dump() if result.output is not None else result.text
            typer.echo(output if isinstance(output, str) else
                       json.dumps(output, ensure_ascii=False, indent=1))
            return done_fields(result)
        done: dict[str, Any] = {}
        async for event, data in stream_events(await runner.stream(spec, request)):
            if event == PROGRESS:
                await _progress(data)
            elif event == META:
                report = data["context_metadata"]
                typer.echo(f"prompt {report['prompt_tokens']} tokens, window "
                           f"{report['window_tokens']}; generating...", err=True)
            elif event == TOKEN:
                typer.echo(data["text"], nl=False)
            elif event == DONE:
                done = data
                typer.echo()
        return done

    typer.echo(_usage_line(_with_runner(Settings(**ctx.obj), archive, work)), err=True)


# --- the author's own model -------------------------------------------------------------------

def _base_model_path(settings: Settings) -> Path:
    """The GGUF the server loads (MODEL_PATH, default the embedded model)."""
    from app.llm.llama import default_model_path

    return settings.model.path or default_model_path()


@app.command()
def dataset(
    ctx: typer.Context,
    paths: Annotated[list[Path] | None, typer.Argument(
        help="Files or directories (searched recursively for .txt .md .docx .html) of the "
        "author's own writing; none: the tenant's archive files tagged voice.")] = None,
    name: Annotated[str, typer.Option(help="Dataset name: written to "
                                           "FINETUNE_DIR/datasets/NAME.")] = "default",
    out: Annotated[Path | None, typer.Option(help="Output directory (instead of the "
                                                  "named one).")] = None,
    split_by: Annotated[str, typer.Option(
        help="Unit of the train/validation split: file, chapter, or auto (file with two "
        "files or more, else chapter).")] = "auto",
    validation_fraction: Annotated[float | None, typer.Option(
        min=0.0, max=1.0, help="Share of units held out (FINETUNE_VALIDATION_FRACTION).")]
    = None,
    seed: Annotated[int | None, typer.Option(help="Split seed (FINETUNE_SEED).")] = None,
    passage_tokens: Annotated[int | None, typer.Option(
        min=16, help="Most tokens of a passage (FINETUNE_PASSAGE_TOKENS).")] = None,
    min_corpus_tokens: Annotated[int | None, typer.Option(
        min=1, help="Fewest tokens of a corpus (FINETUNE_MIN_CORPUS_TOKENS).")] = None,
) -> None:
    """Build a training set (train.jsonl, validation.jsonl, report.json) of continuation and
    scene-from-summary pairs, split by file or chapter. Exit code 2: too little text."""
    from app.finetune.dataset import (
        CachedSummaries,
        build_dataset,
        documents_from_archive,
        documents_from_paths,
    )
    from app.llm.llama import GgufTokenizer

    if split_by not in ("file", "chapter", "auto"):
        typer.echo("error: --split-by is file, chapter or auto", err=True)
        raise typer.Exit(2)
    settings = Settings(**ctx.obj)
    ft = settings.finetune
    tenant = current_tenant.get()
    try:
        tokenizer = GgufTokenizer.load(_base_model_path(settings))
        if paths:
            documents = documents_from_paths(paths, settings.archive.max_expanded_bytes)
            source = " ".join(str(p) for p in paths)
        else:
            documents = documents_from_archive(_archive(ctx))
            source = f"archive:{tenant}"
    except FileNotFoundError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    except WriterAssistantError as error:
        _fail(error, 2)
    summaries = None
    distillation = settings.distillation
    if distillation.cache_dir.is_dir():  # never create a cache just to look into it
        from app.context.summaries import SummaryCache

        cache = SummaryCache(distillation.cache_dir, distillation.cache_max_bytes,
                             tokenizer.model_name)
        ctx.call_on_close(cache.close)
        summaries = CachedSummaries(cache, tenant, distillation.chunk_summary_tokens,
                                    tokenizer.count_tokens)
    out_dir = out or ft.dir / "datasets" / name
    try:
        report = build_dataset(
            documents, out_dir, tokenizer=tokenizer, source=source,
            split_by=split_by,  # type: ignore[arg-type]
            passage_tokens=passage_tokens or ft.passage_tokens,
            validation_fraction=(validation_fraction if validation_fraction is not None
                                 else ft.validation_fraction),
            seed=seed if seed is not None else ft.seed,
            min_corpus_tokens=min_corpus_tokens or ft.min_corpus_tokens, summaries=summaries)
    except WriterAssistantError as error:
        _fail(error, 2)
    for split in ("train", "validation"):
        part = getattr(report, split)
        typer.echo(f"{split}: {part.examples} examples ({part.continuation} continuation, "
                   f"{part.scene_from_summary} scene-from-summary), {part.prompt_tokens} prompt "
                   f"+ {part.completion_tokens} completion tokens, {len(part.units)} "
                   f"{report.split_by}s from {len(part.files)} files")
    typer.echo(f"written to {out_dir}")


@app.command()
def finetune(
    ctx: typer.Context,
    dataset_dir: Annotated[Path | None, typer.Option(
        "--dataset", help="Dataset directory (default FINETUNE_DIR/datasets/default).")]
    = None,
    name: Annotated[str, typer.Option(help="Adapter name: written to "
                                           "FINETUNE_DIR/adapters/NAME.")] = "default",
    out: Annotated[Path | None, typer.Option(help="Adapter directory (instead of the "
                                                  "named one).")] = None,
    r: Annotated[int | None, typer.Option("--r", min=1, help="LoRA rank (FINETUNE_LORA_R).")]
    = None,
    alpha: Annotated[int | None, typer.Option(min=1, help="LoRA alpha (FINETUNE_LORA_ALPHA).")]
    = None,
    dropout: Annotated[float | None, typer.Option(
        min=0.0, max=0.99, help="LoRA dropout (FINETUNE_LORA_DROPOUT).")] = None,
    target_modules: Annotated[str | None, typer.Option(
        help="Comma-separated projections (FINETUNE_TARGET_MODULES).")] = None,
    learning_rate: Annotated[float | None, typer.Option(
        "--learning-rate", "--lr", min=0.0, help="FINETUNE_LEARNING_RATE.")] = None,
    epochs: Annotated[float | None, typer.Option(min=0.0, help="FINETUNE_EPOCHS.")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="FINETUNE_BATCH_SIZE.")] = None,
    max_seq_len: Annotated[int | None, typer.Option(
        min=8, help="Tokens per example (FINETUNE_MAX_SEQ_LEN).")] = None,
    max_steps: Annotated[int | None, typer.Option(
        min=1, help="Hard cap on steps (FINETUNE_MAX_STEPS).")] = None,
    max_seconds: Annotated[float | None, typer.Option(
        min=0.0, help="Hard cap on seconds of training (FINETUNE_MAX_SECONDS).")] = None,
    save_steps: Annotated[int | None, typer.Option(
        min=1, help="Steps between checkpoints (FINETUNE_SAVE_STEPS).")] = None,
    eval_examples: Annotated[int | None, typer.Option(
        min=0, help="Validation examples for the record's loss (FINETUNE_EVAL_EXAMPLES).")]
    = None,
    seed: Annotated[int | None, typer.Option(help="FINETUNE_SEED.")] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads for torch.")] = None,
    progress: Annotated[bool, typer.Option(help="Show the progress bar.")] = True,
) -> None:
    """Fine-tune a LoRA adapter of the served model on a dataset (CUDA when present, else
    CPU), resuming from the adapter directory's last checkpoint; export it as a GGUF LoRA
    adapter (adapter.gguf) with its training record (training.json). Exit code 2: no usable
    dataset."""
    from app.finetune.training import Hyperparameters
    from app.finetune.training import finetune as run_finetune

    settings = Settings(**ctx.obj)
    ft = settings.finetune

    def pick(value: T | None, default: T) -> T:
        return default if value is None else value

    hyperparameters = Hyperparameters(
        lora_r=pick(r, ft.lora_r), lora_alpha=pick(alpha, ft.lora_alpha),
        lora_dropout=pick(dropout, ft.lora_dropout),
        target_modules=tuple(m.strip() for m in pick(target_modules, ft.target_modules)
                             .split(",") if m.strip()),
        learning_rate=pick(learning_rate, ft.learning_rate), epochs=pick(epochs, ft.epochs),
        batch_size=pick(batch_size, ft.batch_size), max_seq_len=pick(max_seq_len, ft.max_seq_len),
        max_steps=pick(max_steps, ft.max_steps), max_seconds=pick(max_seconds, ft.max_seconds),
        save_steps=pick(save_steps, ft.save_steps),
        eval_examples=pick(eval_examples, ft.eval_examples), seed=pick(seed, ft.seed),
    )
    adapter_dir = out or ft.dir / "adapters" / name
    try:
        record = run_finetune(dataset_dir or ft.dir / "datasets" / "default", adapter_dir,
                              base_gguf=_base_model_path(settings),
                              hyperparameters=hyperparameters, progress=progress,
                              threads=threads)
    except WriterAssistantError as error:
        _fail(error, 2)
    resumed = (f", resumed from step {record.resumed_from_step}"
               if record.resumed_from_step is not None else "")
    validation = (f", validation loss {record.validation_loss:.3f}"
                  if record.validation_loss is not None else "")
    typer.echo(f"{record.steps} steps on {record.device}{resumed} ({record.stopped_by}), train "
               f"loss {record.train_loss:.3f}{validation}, {record.seconds:.0f} s")
    typer.echo(f"adapter: {adapter_dir / record.adapter_gguf}")


# --- evaluation -------------------------------------------------------------------------------

def _evaluation_style(ctx: typer.Context, enabled: bool) -> tuple[Any, str | None]:
    """The voice profile to compare continuations with (the tenant's archive), or ``None``
    and why not."""
    from app.finetune.evaluate import voice_style
    from app.voice.service import VoiceProfiles

    if not enabled:
        return None, "Not measured (--no-style)."
    settings = Settings(**ctx.obj)
    if not settings.archive.enabled:
        return voice_style(VoiceProfiles(), None)  # the note says why
    from app.archive.service import Archive
    from app.observability.metrics import Metrics

    try:
        archive = Archive.open(settings.archive, Metrics())
    except WriterAssistantError as error:
        return None, error.message
    ctx.call_on_close(archive.close)
    return voice_style(VoiceProfiles(), archive.for_tenant(current_tenant.get()))


def _clip(text: str, limit: int = 240) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _print_evaluation(report: Any) -> None:
    """The metrics, base against tuned, then the samples side by side (rich tables)."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    metrics = Table(title=f"{report.settings.examples} examples, {report.settings.max_tokens} "
                    f"completion tokens at most, {report.seconds:.1f} s")
    for column in ("metric", "base", "tuned"):
        metrics.add_column(column, justify="left" if column == "metric" else "right")
    for label, name in (("perplexity (lower is better)", "perplexity"),
                        ("NLL, nats per token", "nll_nats_per_token"),
                        ("ROUGE-L F1", "rouge_l"), ("BLEU", "bleu"),
                        ("style similarity", "style_similarity"),
                        ("completion tokens", "completion_tokens"), ("seconds", "seconds")):
        values = [getattr(report.base, name), getattr(report.tuned, name)]
        metrics.add_row(label, *("n/a" if v is None else f"{v:g}" for v in values))
    console.print(metrics)
    if report.style_note:
        console.print(f"style similarity: {report.style_note}")
    samples = Table(title="Side by side", show_lines=True)
    for column in ("#", "context (end)", "real next passage", "base", "tuned"):
        samples.add_column(column, overflow="fold")
    for sample in report.samples:
        samples.add_row(str(sample.index), _clip(sample.context_excerpt, 160),
                        _clip(sample.reference), _clip(sample.base), _clip(sample.tuned))
    console.print(samples)


@app.command()
def evaluate(
    ctx: typer.Context,
    validation: Annotated[Path, typer.Option(
        help="The validation split: a JSONL file, or a dataset directory holding "
        "validation.jsonl (`writer-assistant dataset`).", exists=True, readable=True)],
    adapter: Annotated[Path, typer.Option(
        help="The LoRA adapter to apply to the base model (MODEL_PATH): its GGUF file, or "
        "the adapter directory of `writer-assistant finetune` (its adapter.gguf).",
        exists=True, readable=True)],
    examples: Annotated[int, typer.Option(min=1, help="Examples evaluated (the file's "
                                          "first ones).")] = 8,
    max_tokens: Annotated[int, typer.Option(min=1, help="Completion tokens of each "
                                            "continuation at most.")] = 64,
    out: Annotated[Path, typer.Option(help="Directory for report.json and chart.png.")]
    = Path("evaluation"),
    style: Annotated[bool, typer.Option(
        "--style/--no-style", help="Measure style similarity to your voice profile (needs "
        "the archive: loads the embedding model).")] = True,
) -> None:
    """Compare the base model with base plus ADAPTER on the validation split: perplexity of
    the real next passages, ROUGE-L and BLEU of greedy continuations, style similarity to
    your voice; print the metrics and the samples side by side, write report.json and
    chart.png."""
    from app.finetune.evaluate import evaluate as run_evaluation
    from app.finetune.evaluate import open_scorers, read_examples, write_outputs
    from app.finetune.jobs import resolve_adapter, resolve_validation

    settings = Settings(**ctx.obj)
    try:
        path = resolve_validation(validation.parent, validation.name)
        adapter = resolve_adapter(adapter.parent, adapter.name)
        rows = read_examples(path, examples)
        reference, note = _evaluation_style(ctx, style)
        base, tuned = open_scorers(_base_model_path(settings), adapter,
                                   settings.finetune.evaluation_n_ctx, settings.model.n_threads)
    except WriterAssistantError as error:
        _fail(error)
    try:
        with tqdm(total=len(rows), desc="examples", unit="example", file=sys.stderr) as bar:
            def advance(_done: int, _total: int) -> None:
                bar.update(1)

            report = run_evaluation(base, tuned, rows, adapter=str(adapter),
                                    validation=str(path), max_tokens=max_tokens,
                                    style=reference, style_note=note, progress=advance)
    finally:
        base.close()
        tuned.close()
    json_path, chart_path = write_outputs(report, out)
    _print_evaluation(report)
    typer.echo(f"wrote {json_path} and {chart_path}", err=True)
