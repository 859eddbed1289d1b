"""Evaluation jobs of the service: queued by ``POST /api/v1/evaluations``, run in the
background, kept on disk.

Requests name an adapter under ``FINETUNE_DIR/adapters`` and a dataset under
``FINETUNE_DIR/datasets``, where ``writer-assistant finetune`` and ``dataset`` write them.
Each job is a directory ``FINETUNE_DIR/evaluations/<tenant>/<id>/`` holding ``job.json`` (an
:class:`app.schemas.evaluations.EvaluationJob` without its report), and once done
``report.json`` and ``chart.png``; so results survive a restart, and another tenant's id is
simply not found. A job still ``queued`` or ``running`` on disk that no task of this process
runs was interrupted by a restart and is answered as ``failed``.

The model work takes turns with the service's generations through the scheduler
(:class:`app.llm.scheduler.Scheduler`) as background work: one turn to open the two
evaluation models, then one turn per example (both models), so an interactive request waits
at most one example. A full queue or a long wait delays the job, never fails it. Blocking
work (reading files, llama.cpp, embeddings, matplotlib) runs in worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from app.config import FinetuneSettings
from app.errors import (
    AdapterNotFound,
    DatasetNotFound,
    EvaluationNotFound,
    QueueFull,
    QueueTimeout,
    WriterAssistantError,
)
from app.finetune.dataset import VALIDATION_FILE
from app.finetune.evaluate import (
    EvaluationReport,
    Evaluator,
    ExampleResult,
    Scorer,
    StyleReference,
    ValidationExample,
    check_base,
    open_scorers,
    read_examples,
    write_outputs,
)
from app.llm.scheduler import JobClass, Scheduler, wait_uncancellable
from app.schemas.evaluations import EvaluationJob, EvaluationRequest, JobError, Progress

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: The style reference of the job's tenant, or ``None`` and why (blocking; called in a thread).
StyleSource = Callable[[], tuple[StyleReference | None, str | None]]

_JOB_ID = re.compile(r"[0-9a-f]{32}")
#: Where, under ``FINETUNE_DIR``, adapters, datasets and evaluations are.
ADAPTERS = "adapters"
DATASETS = "datasets"
EVALUATIONS = "evaluations"


def _below(root: Path, name: str) -> Path | None:
    """``root / name`` resolved, when it stays below ``root`` (symbolic links followed);
    ``None`` for a name no file system path can have (a NUL byte)."""
    base = root.resolve()
    try:
        path = (base / name).resolve()
    except (ValueError, OSError):
        return None
    return path if path.is_relative_to(base) else None


def resolve_adapter(adapters_dir: Path | tuple[Path, ...], name: str) -> Path:
    """The adapter file ``name`` names under ``adapters_dir`` (or the first of several
    directories that has it): the file itself, ``name.gguf``, or the one ``.gguf`` in the
    directory ``name``.

    Raises:
        AdapterNotFound: none of these exists below any of the directories (HTTP 404).
    """
    directories = adapters_dir if isinstance(adapters_dir, tuple) else (adapters_dir,)
    for directory in directories:
        path = _below(directory, name)
        candidates = [] if path is None else [path, path.with_name(path.name + ".gguf")]
        for candidate in candidates:
            if candidate.is_file():
                return candidate
            if candidate.is_dir() and len(found := sorted(candidate.glob("*.gguf"))) == 1:
                return found[0]
    raise AdapterNotFound(f"No adapter {name!r}: name one registered in ADAPTERS_DIR "
                          "(`writer-assistant adapters add`, as GET /api/v1/models lists "
                          f"them) or one under FINETUNE_DIR/{ADAPTERS} that "
                          "`writer-assistant finetune --name NAME` made.", param="adapter")


def resolve_validation(finetune_dir: Path, name: str) -> Path:
    """The validation file ``name`` names under ``finetune_dir``: the file itself, or
    ``validation.jsonl`` in the dataset directory ``name``.

    Raises:
        DatasetNotFound: neither exists below ``finetune_dir`` (HTTP 404).
    """
    path = _below(finetune_dir, name)
    if path is not None and path.is_dir():
        path = path / VALIDATION_FILE
    if path is None or not path.is_file():
        raise DatasetNotFound(f"No validation file {name!r} under FINETUNE_DIR/{DATASETS}: "
                              "name a dataset that `writer-assistant dataset --name NAME` "
                              f"made (or its {VALIDATION_FILE}, relative to that directory).",
                              param="validation")
    return path


async def _in_thread(function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` in a worker thread, waited for even if this task is cancelled
    meanwhile (the turn must not pass on while the thread still uses a model); a
    cancellation is raised once the thread is done."""
    future = asyncio.ensure_future(asyncio.to_thread(function, *args))
    await wait_uncancellable(future)
    return future.result()


def _now() -> datetime:
    return datetime.now(UTC)


class EvaluationJobs:
    """The evaluation jobs of one service: on disk under ``FINETUNE_DIR/evaluations``, run
    as background turns of ``scheduler``, on the base model at ``model_path`` (``None``: the
    embedded one) with ``n_threads`` threads (``None``: all cores)."""

    def __init__(self, settings: FinetuneSettings, scheduler: Scheduler,
                 model_path: Path | None, n_threads: int | None = None,
                 registered: Path | None = None) -> None:
        self.settings = settings
        #: Where adapter names are looked up: the registered (served) ones first.
        self.adapter_dirs = (*((registered,) if registered is not None else ()),
                             settings.dir / ADAPTERS)
        self.scheduler = scheduler
        self.model_path = model_path
        self.n_threads = n_threads
        self._tasks: dict[str, asyncio.Task[None]] = {}

    # --- disk ---------------------------------------------------------------------------
    def _dir(self, tenant: str, job_id: str) -> Path:
        return self.settings.dir / EVALUATIONS / tenant / job_id

    def _save(self, tenant: str, job: EvaluationJob) -> None:
        directory = self._dir(tenant, job.id)
        directory.mkdir(parents=True, exist_ok=True)
        partial = directory / "job.json.tmp"
        partial.write_text(job.model_dump_json(exclude={"report", "chart_url"}, indent=2),
                           encoding="utf-8")
        os.replace(partial, directory / "job.json")  # readers never see half a file

    def get(self, tenant: str, job_id: str) -> EvaluationJob:
        """Job ``job_id`` of ``tenant`` with its report once done (blocking: reads files).

        Raises:
            EvaluationNotFound: no such job for this tenant (HTTP 404).
        """
        path = self._dir(tenant, job_id) / "job.json"
        if not _JOB_ID.fullmatch(job_id) or not path.is_file():
            raise EvaluationNotFound(f"No evaluation {job_id!r}: use the id that "
                                     "POST /api/v1/evaluations answered.", param="id")
        job = EvaluationJob.model_validate_json(path.read_text(encoding="utf-8"))
        if job.status in ("queued", "running") and job_id not in self._tasks:
            job.status, job.finished_at = "failed", job.finished_at or _now()
            job.error = JobError(code="evaluation_interrupted", message=(
                "The server restarted before the evaluation finished; submit it again."))
        if job.status == "done":
            report = path.with_name("report.json").read_text(encoding="utf-8")
            job.report = EvaluationReport.model_validate_json(report)
            job.chart_url = f"/api/v1/evaluations/{job_id}/chart.png"
        return job

    def chart(self, tenant: str, job_id: str) -> Path:
        """The chart of job ``job_id`` of ``tenant`` (blocking).

        Raises:
            EvaluationNotFound: no such job, or it has no chart yet (HTTP 404).
        """
        job = self.get(tenant, job_id)
        path = self._dir(tenant, job_id) / "chart.png"
        if job.status != "done" or not path.is_file():
            raise EvaluationNotFound(f"Evaluation {job_id} has no chart: it is {job.status}.",
                                     param="id")
        return path

    # --- submitting -----------------------------------------------------------------------
    def prepare(self, tenant: str, request: EvaluationRequest
                ) -> tuple[EvaluationJob, Path, list[ValidationExample]]:
        """Check ``request`` and record its job as queued (blocking: reads the validation
        file): the job, the adapter's path and the examples. Nothing touches a model.

        Raises:
            AdapterNotFound, DatasetNotFound: a named file does not exist (HTTP 404).
            InvalidAdapter: the adapter is no GGUF LoRA adapter (HTTP 422).
            AdapterMismatch: it was made for another base model (HTTP 409).
            DatasetInvalid: the validation file has a bad line or no example (HTTP 422).
        """
        adapter = resolve_adapter(self.adapter_dirs, request.adapter)
        validation = resolve_validation(self.settings.dir / DATASETS, request.validation)
        examples = read_examples(validation, request.examples)
        check_base(self.model_path, adapter)
        job = EvaluationJob(id=uuid.uuid4().hex, status="queued",
                            progress=Progress(done=0, total=len(examples)), request=request,
                            created_at=_now())
        self._save(tenant, job)
        return job, adapter, examples

    def start(self, tenant: str, job: EvaluationJob, adapter: Path,
              examples: list[ValidationExample], style: StyleSource) -> None:
        """Run ``job`` as a task of the running loop (it inherits the caller's context, so
        the tenant's)."""
        task = asyncio.get_running_loop().create_task(
            self._run(tenant, job, adapter, examples, style), name=f"evaluation-{job.id}")
        self._tasks[job.id] = task
        task.add_done_callback(lambda _task: self._tasks.pop(job.id, None))

    # --- running --------------------------------------------------------------------------
    async def _turn(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` in a worker thread during a background turn at the model; a
        full queue or a turn that does not come in time is tried again after a pause."""
        while True:
            try:
                turn = self.scheduler.reserve(JobClass.background)
            except QueueFull as error:
                await asyncio.sleep(min(30.0, error.retry_after or 1.0))
                continue
            try:
                async with turn:
                    return await _in_thread(function, *args)
            except QueueTimeout:
                continue
            finally:
                turn.cancel()

    async def _run(self, tenant: str, job: EvaluationJob, adapter: Path,
                   examples: list[ValidationExample], style_source: StyleSource) -> None:
        scorers: tuple[Scorer, Scorer] | None = None
        started = asyncio.get_running_loop().time()
        try:
            style, note = await asyncio.to_thread(style_source)
            scorers = await self._turn(open_scorers, self.model_path, adapter,
                                       self.settings.evaluation_n_ctx, self.n_threads)
            job.status = "running"
            await asyncio.to_thread(self._save, tenant, job)
            evaluator = Evaluator(*scorers, max_tokens=job.request.max_tokens, style=style,
                                  style_note=note)
            results: list[ExampleResult] = []
            for index, example in enumerate(examples):
                results.append(await self._turn(evaluator.run_example, index, example))
                job.progress = Progress(done=index + 1, total=len(examples))
                await asyncio.to_thread(self._save, tenant, job)
            report = evaluator.report(
                results, adapter=job.request.adapter, validation=job.request.validation,
                seconds=asyncio.get_running_loop().time() - started)
            await asyncio.to_thread(write_outputs, report, self._dir(tenant, job.id))
            job.status = "done"
        except asyncio.CancelledError:
            job.status, job.error = "failed", JobError(
                code="evaluation_interrupted",
                message="The server shut down before the evaluation finished; submit it "
                "again.")
            raise
        except WriterAssistantError as error:
            job.status, job.error = "failed", JobError(code=error.code, message=error.message)
        except Exception as error:
            logger.exception("evaluation %s failed", job.id)
            job.status, job.error = "failed", JobError(
                code="internal_error",
                message=f"The evaluation failed ({type(error).__name__}); see the server log.")
        finally:
            job.finished_at = _now()
            with contextlib.suppress(OSError):
                self._save(tenant, job)
            if scorers is not None:
                for scorer in scorers:
                    scorer.close()
            logger.info("evaluation %s %s", job.id, job.status,
                        extra={"progress": job.progress.done, "total": job.progress.total})

    async def aclose(self) -> None:
        """Cancel the running jobs (each records itself as interrupted) and wait for them."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
