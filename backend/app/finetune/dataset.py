"""The training set of the author's own model: prompt/completion pairs from the author's texts,
split by file or chapter so that no validation text is ever trained on.

Two kinds of example (both ``{"prompt", "completion"}`` records of plain text):

- ``continuation``: a passage, then the next passage of the same file or chapter. Passages
  are whole paragraphs grouped up to ``passage_tokens`` tokens of the served model's own
  tokenizer (a longer paragraph breaks at sentences: :func:`app.context.trim.split_to_budget`).
- ``scene_from_summary``: a summary the distillation cache already holds of a chapter (or
  file), then that chapter's text. The cache is keyed by a digest of the exact text, its
  strategy and target length, so a chapter counts when it was distilled whole as an older
  chapter of a story (``fit_story_by_distilling``: target
  ``min(DISTILLATION_CHUNK_SUMMARY_TOKENS, tokens / 2)``, any strategy). Nothing is summarized
  here; the report says how many were found.

The split: the units (files, or chapters: ``split_by``) are shuffled with ``seed`` and the
first ``max(1, round(validation_fraction * units))`` held out for validation (at least one
unit stays for training). Examples never cross a unit, so a text is in one split only.

Output in a directory: ``train.jsonl``, ``validation.jsonl`` and ``report.json``
(:class:`DatasetReport`).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from pydantic import BaseModel, Field

from app.archive.documents import Document, parse_document, text_chapters
from app.archive.ingest import collect_paths
from app.context.distill import Layer, Strategy, SummaryJob
from app.context.trim import split_to_budget
from app.errors import DatasetTooSmall, InvalidRequest

if TYPE_CHECKING:
    from app.archive.service import Archive

logger = logging.getLogger(__name__)

SplitBy = Literal["file", "chapter", "auto"]
ExampleKind = Literal["continuation", "scene_from_summary"]

#: The instruction that opens a scene-from-summary prompt.
SCENE_INSTRUCTION = "Write the scene that this summary tells, in the author's own words."

#: What ends a continuation prompt: the paragraph break between the two passages.
PASSAGE_BREAK = "\n\n"

TRAIN_FILE = "train.jsonl"
VALIDATION_FILE = "validation.jsonl"
REPORT_FILE = "report.json"


class TokenCounter(Protocol):
    """Counts tokens with the served model's own tokenizer (``GgufTokenizer``)."""

    @property
    def model_name(self) -> str: ...

    def count_tokens(self, text: str) -> int: ...


@dataclass(frozen=True)
class Unit:
    """What the split assigns whole: a file, or one chapter of it. ``name`` is
    ``file`` or ``file#chapter title``; ``text`` its text (characters)."""

    file: str
    name: str
    text: str


@dataclass(frozen=True)
class Example:
    """One training record: ``prompt`` then ``completion`` (plain text), with their token
    counts (the served model's tokenizer), its ``kind`` and the ``unit`` it comes from."""

    kind: ExampleKind
    prompt: str
    completion: str
    prompt_tokens: int
    completion_tokens: int
    file: str
    unit: str

    def record(self) -> dict[str, object]:
        """The JSONL record."""
        return {"kind": self.kind, "prompt": self.prompt, "completion": self.completion,
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "file": self.file,
                "unit": self.unit}


class SplitReport(BaseModel):
    """One split of a dataset: its files and units, examples by kind, and tokens."""

    files: list[str] = Field(description="Files with text in this split.")
    units: list[str] = Field(description="Files or chapters (file#chapter) in this split.")
    examples: int = Field(description="Records in the split's JSONL.")
    continuation: int = Field(description="Continuation pairs.")
    scene_from_summary: int = Field(description="Scene-from-summary pairs.")
    prompt_tokens: int = Field(description="Tokens of every prompt (the model's tokenizer).")
    completion_tokens: int = Field(description="Tokens of every completion.")
    text_tokens: int = Field(description="Tokens of the split's source text.")


class DatasetReport(BaseModel):
    """What a dataset was built from and holds (``report.json``)."""

    source: str = Field(description="'archive:<tenant>' or the paths given.")
    tokenizer: str = Field(description="The model whose tokenizer counted the tokens.")
    split_by: Literal["file", "chapter"]
    seed: int
    validation_fraction: float
    passage_tokens: int = Field(description="Most tokens of a continuation passage.")
    corpus_tokens: int = Field(description="Tokens of all the units' text.")
    skipped_front_matter_chars: int = Field(
        description="Characters before the first chapter, left out when splitting by chapter.")
    scene_from_summary_pairs: int = Field(
        description="Units whose summary the distillation cache held (both splits).")
    train: SplitReport
    validation: SplitReport


def documents_from_paths(paths: Iterable[Path], max_expanded_bytes: int) -> list[Document]:
    """Parse the files at ``paths`` (files, or folders searched recursively for .txt, .md,
    .docx and .html, as ``writer-assistant ingest`` does), each tagged the author's own.

    Raises:
        FileNotFoundError: a path does not exist.
        UnsupportedDocument, InvalidDocument, DocumentTooLarge: a file cannot be parsed.
    """
    return [dataclasses.replace(parse_document(name, path.read_bytes(),
                                               max_expanded_bytes=max_expanded_bytes),
                                voice=True)
            for path, name in collect_paths(paths)]


def documents_from_archive(archive: Archive) -> list[Document]:
    """The tenant's archive files tagged voice (the author's own), their text rebuilt from the
    archive; chapters are found again in the text (``text_chapters``).

    Raises:
        ArchiveUnavailable: the archive cannot serve.
    """
    documents = []
    for info in archive.files().files:
        if info.voice:
            text = archive.file_text(info.file).text
            documents.append(Document(info.file, info.title, text, text_chapters(text),
                                      info.format, voice=True))
    return documents


def units_of(documents: Sequence[Document], split_by: Literal["file", "chapter"]
             ) -> tuple[list[Unit], int]:
    """The units of ``documents`` (files, or chapters: a document without chapters is one
    unit) and the characters of front matter left out (text before the first chapter, when
    splitting by chapter). Blank units are left out."""
    units: list[Unit] = []
    skipped = 0
    for document in documents:
        chapters = document.chapters or text_chapters(document.text)
        if split_by == "file" or not chapters:
            units.append(Unit(document.file, document.file, document.text.strip()))
            continue
        skipped += len(document.text[:chapters[0].start].strip())
        ends = [c.start for c in chapters[1:]] + [len(document.text)]
        for mark, end in zip(chapters, ends, strict=True):
            units.append(Unit(document.file, f"{document.file}#{mark.title}",
                              document.text[mark.start:end].strip()))
    return [u for u in units if u.text], skipped


def split_units(units: Sequence[Unit], validation_fraction: float, seed: int
                ) -> tuple[list[Unit], list[Unit]]:
    """(train, validation): the units shuffled with ``seed``, the first
    ``max(1, round(validation_fraction * len(units)))`` (at most ``len(units) - 1``) for
    validation. The same units, fraction and seed give the same split.

    Raises:
        DatasetTooSmall: fewer than two units (nothing to hold out).
    """
    if len(units) < 2:
        raise DatasetTooSmall(
            f"The corpus has {len(units)} file or chapter with text; a split needs at least two "
            "so that validation text never appears in training (give more files, or split a "
            "file with chapters by chapter).", units=len(units))
    order = list(units)
    random.Random(seed).shuffle(order)
    held_out = min(len(order) - 1, max(1, round(validation_fraction * len(order))))
    return order[held_out:], order[:held_out]


def continuation_examples(unit: Unit, passage_tokens: int, count: Callable[[str], int]
                          ) -> list[Example]:
    """Each passage of ``unit`` (paragraphs grouped up to ``passage_tokens`` tokens), followed
    by :data:`PASSAGE_BREAK`, as the prompt of the next passage."""
    passages = [p.strip() for p in split_to_budget(unit.text, passage_tokens, count)]
    passages = [p for p in passages if p]
    return [Example("continuation", f"{prompt}{PASSAGE_BREAK}", completion,
                    count(f"{prompt}{PASSAGE_BREAK}"), count(completion), unit.file, unit.name)
            for prompt, completion in itertools.pairwise(passages)]


class CachedSummaries:
    """Finds a text's summary in the distillation cache (``SummaryCache``) of ``tenant``,
    without making any: as the distiller keys an older chapter distilled whole (any strategy,
    target ``min(chunk_summary_tokens, tokens // 2)``)."""

    def __init__(self, cache: SummaryLookupCache, tenant: str, chunk_summary_tokens: int,
                 count: Callable[[str], int]) -> None:
        self.cache = cache
        self.tenant = tenant
        self.chunk_summary_tokens = chunk_summary_tokens
        self.count = count

    def find(self, text: str) -> str | None:
        """The cached summary of ``text``, or ``None``."""
        target = min(self.chunk_summary_tokens, self.count(text) // 2)
        for strategy in Strategy:
            job = SummaryJob(Layer.recent_story, strategy, 1, text, target, (), "")
            summary = self.cache.get(job, tenant=self.tenant)
            if summary:
                return summary
        return None


class SummaryLookupCache(Protocol):
    """What :class:`CachedSummaries` needs of ``app.context.summaries.SummaryCache``."""

    def get(self, job: SummaryJob, *, tenant: str) -> str | None: ...


def scene_prompt(summary: str) -> str:
    """The prompt of a scene-from-summary pair."""
    return f"{SCENE_INSTRUCTION}\n\nSummary:\n{summary}\n\nScene:\n"


def _report(units: Sequence[Unit], examples: Sequence[Example],
            count: Callable[[str], int]) -> SplitReport:
    return SplitReport(
        files=sorted({u.file for u in units}), units=[u.name for u in units],
        examples=len(examples),
        continuation=sum(e.kind == "continuation" for e in examples),
        scene_from_summary=sum(e.kind == "scene_from_summary" for e in examples),
        prompt_tokens=sum(e.prompt_tokens for e in examples),
        completion_tokens=sum(e.completion_tokens for e in examples),
        text_tokens=sum(count(u.text) for u in units),
    )


def build_dataset(documents: Sequence[Document], out_dir: Path, *, tokenizer: TokenCounter,
                  source: str, split_by: SplitBy = "auto", passage_tokens: int = 128,
                  validation_fraction: float = 0.1, seed: int = 0,
                  min_corpus_tokens: int = 2000,
                  summaries: CachedSummaries | None = None) -> DatasetReport:
    """Build the training set of ``documents`` into ``out_dir`` (created): ``train.jsonl``,
    ``validation.jsonl`` (one :meth:`Example.record` a line) and ``report.json``.

    ``split_by`` ``auto`` splits by file when there are two files or more, else by chapter.
    Tokens are counted with ``tokenizer`` (the served model's own). ``summaries``, when given,
    adds scene-from-summary pairs for the units the distillation cache has a summary of.
    Everything is checked before anything is written.

    Raises:
        DatasetTooSmall: no text, fewer than ``min_corpus_tokens`` tokens, fewer than two
            units, or a split without a single example (a validation unit too short for one
            continuation pair, say); ``details`` carries the counts.
    """
    count = tokenizer.count_tokens
    mode: Literal["file", "chapter"] = (
        split_by if split_by != "auto" else "file" if len(documents) >= 2 else "chapter")
    units, skipped = units_of(documents, mode)
    corpus_tokens = sum(count(u.text) for u in units)
    if corpus_tokens < min_corpus_tokens:
        raise DatasetTooSmall(
            f"The corpus holds {corpus_tokens} tokens of text in {len(documents)} files; a "
            f"training set needs at least {min_corpus_tokens} (FINETUNE_MIN_CORPUS_TOKENS).",
            corpus_tokens=corpus_tokens, min_corpus_tokens=min_corpus_tokens,
            files=len(documents))
    train_units, validation_units = split_units(units, validation_fraction, seed)
    splits: dict[str, list[Example]] = {}
    found = 0
    for split, members in (("train", train_units), ("validation", validation_units)):
        examples: list[Example] = []
        for unit in members:
            examples += continuation_examples(unit, passage_tokens, count)
            summary = summaries.find(unit.text) if summaries is not None else None
            if summary:
                found += 1
                prompt = scene_prompt(summary)
                examples.append(Example("scene_from_summary", prompt, unit.text, count(prompt),
                                        count(unit.text), unit.file, unit.name))
        if not examples:
            raise DatasetTooSmall(
                f"The {split} split ({', '.join(u.name for u in members)}) has no text for a "
                f"single example: each unit needs two passages of up to {passage_tokens} "
                "tokens; give more text or change the seed or validation fraction.",
                split=split, units=len(members))
        splits[split] = examples
    report = DatasetReport(
        source=source, tokenizer=tokenizer.model_name, split_by=mode, seed=seed,
        validation_fraction=validation_fraction, passage_tokens=passage_tokens,
        corpus_tokens=corpus_tokens, skipped_front_matter_chars=skipped,
        scene_from_summary_pairs=found,
        train=_report(train_units, splits["train"], count),
        validation=_report(validation_units, splits["validation"], count),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_jsonl(out_dir / TRAIN_FILE, splits["train"])
    _write_jsonl(out_dir / VALIDATION_FILE, splits["validation"])
    (out_dir / REPORT_FILE).write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    logger.info("dataset %s: %d train and %d validation examples", out_dir,
                report.train.examples, report.validation.examples)
    return report


def _write_jsonl(path: Path, examples: Iterable[Example]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for example in examples:
            handle.write(json.dumps(example.record(), ensure_ascii=False) + "\n")


def read_examples(path: Path) -> list[dict[str, object]]:
    """The records of a dataset's JSONL file (``train.jsonl`` or ``validation.jsonl``)."""
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def read_report(dataset_dir: Path) -> DatasetReport:
    """The ``report.json`` of the dataset in ``dataset_dir``.

    Raises:
        InvalidRequest: the directory holds no dataset (no report).
    """
    path = dataset_dir / REPORT_FILE
    if not path.is_file():
        raise InvalidRequest(f"{dataset_dir} holds no dataset (no {REPORT_FILE}); build one "
                              "with `writer-assistant dataset`.")
    return DatasetReport.model_validate_json(path.read_text(encoding="utf-8"))
