"""Base model against base plus a LoRA adapter, on a dataset's validation split.

For each validation example (a context and the real next passage the author wrote), each
model is measured on the same tokens:

- **perplexity** of the real next passage given its context, from the model's own logits:
  ``PPL = exp(-(1/N) * sum_i ln p(t_i | context, t_<i))`` over the passage's ``N`` tokens,
  ``p`` the softmax of the logits at the position before ``t_i``. The mean negative log
  likelihood is in nats per token; perplexity has no unit (lower: the model expected the
  author's text more). The overall figure is token-weighted: ``exp(sum NLL / sum N)`` over
  all examples (the usual corpus perplexity, not a mean of per-example perplexities).
- **ROUGE-L** F1 (Lin 2004, longest common subsequence; Google's ``rouge-score`` with the
  Porter stemmer) and **BLEU** (Papineni et al. 2002; ``sacrebleu``, 13a tokenization,
  0-100; per example the smoothed sentence BLEU, overall the corpus BLEU) of a greedy
  continuation (temperature 0, ``max_tokens`` completion tokens) against the real passage.
- **style similarity** of each continuation to the author's voice profile: the cosine between
  its mean passage embedding and the profile's centroid (:class:`app.voice.profile.VoiceProfile`),
  -1 to 1; ``None`` with a reason when no profile or embedding model is available.
- **samples**: context excerpt, real next passage, base and tuned continuations side by side.

The report (:class:`EvaluationReport`) is JSON; :func:`write_chart` draws its metrics, base
against tuned, as a PNG. The models are opened through a :class:`Scorer`
(:class:`app.llm.llama.LlamaScorer`); nothing here imports llama.cpp.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from pydantic import BaseModel, Field
from scipy.special import log_softmax

from app.errors import DatasetInvalid, DatasetNotFound

if TYPE_CHECKING:
    from app.archive.service import Archive
    from app.voice.profile import Embed, VoiceProfile
    from app.voice.service import VoiceProfiles

#: Defaults small enough for a CPU run (about a minute for both models on 2 cores).
DEFAULT_EXAMPLES = 8
DEFAULT_MAX_TOKENS = 64
#: Characters of context shown in a sample (its end, where the continuation follows).
EXCERPT_CHARS = 400
#: The kind of dataset record evaluated (``app.finetune.dataset``): a passage, then the next
#: passage. Scene-from-summary records (a summary, then a whole chapter) are left out.
CONTINUATION_KIND = "continuation"


@dataclass(frozen=True)
class ValidationExample:
    """One validation example: ``context`` (the prompt, as trained on: the passage before,
    ending with the paragraph break) and ``continuation`` (the real next passage), and
    ``source`` (the file or chapter it came from, when the record says)."""

    context: str
    continuation: str
    source: str | None = None


def read_examples(path: Path, limit: int | None = None) -> list[ValidationExample]:
    """The first ``limit`` (all with ``None``) continuation examples of the dataset JSONL at
    ``path`` (``validation.jsonl`` of ``writer-assistant dataset``: one JSON object a line with
    ``prompt`` and ``completion`` text, ``kind``, and ``unit`` or ``file``). Records of another
    ``kind`` are skipped; a record without ``kind`` counts as a continuation. Blank lines are
    skipped.

    Raises:
        DatasetNotFound: no file at ``path``.
        DatasetInvalid: a line is not such an object (its number is named), or the file holds
            no continuation example.
    """
    if not path.is_file():
        raise DatasetNotFound(f"No validation file {path.name}: build a dataset first "
                              "(`writer-assistant dataset`) and name its validation.jsonl.",
                              param="validation")
    examples: list[ValidationExample] = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if limit is not None and len(examples) >= limit:
                break
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DatasetInvalid(f"{path.name} line {number} is not JSON ({error.msg}).",
                                     param="validation", line=number) from None
            if not isinstance(row, dict) or not all(
                    isinstance(row.get(key), str) and row[key].strip()
                    for key in ("prompt", "completion")):
                raise DatasetInvalid(f"{path.name} line {number} needs prompt and completion, "
                                     "both non-empty text.", param="validation", line=number)
            if row.get("kind", CONTINUATION_KIND) != CONTINUATION_KIND:
                continue
            source = row.get("unit") or row.get("file")
            examples.append(ValidationExample(row["prompt"], row["completion"],
                                              source if isinstance(source, str) else None))
    if not examples:
        raise DatasetInvalid(f"{path.name} holds no continuation example: the validation "
                             "split is empty (build the dataset from more text).",
                             param="validation")
    return examples


class Scorer(Protocol):
    """A model opened for evaluation (:class:`app.llm.llama.LlamaScorer`)."""

    name: str

    @property
    def n_ctx(self) -> int: ...

    def tokenize(self, text: str, *, bos: bool) -> list[int]: ...

    def logits(self, tokens: Sequence[int], first: int = 0) -> np.ndarray: ...

    def greedy(self, prompt_tokens: Sequence[int], max_tokens: int) -> tuple[str, int]: ...

    def close(self) -> None: ...


def continuation_nll(logits: np.ndarray, targets: Sequence[int]) -> np.ndarray:
    """Negative log likelihood, in nats, of each target token: ``-log_softmax(logits[i])
    [targets[i]]``, where ``logits`` (shape ``(len(targets), n_vocab)``) row ``i`` is the
    model's output at the position before ``targets[i]``. Shape ``(len(targets),)``."""
    rows = log_softmax(logits.astype(np.float64), axis=-1)
    return -rows[np.arange(len(targets)), np.asarray(targets)]


def perplexity(nll_nats: float, tokens: int) -> float:
    """``exp(nll_nats / tokens)``: the perplexity of ``tokens`` tokens whose negative log
    likelihoods sum to ``nll_nats``."""
    return math.exp(nll_nats / tokens)


@dataclass(frozen=True)
class StyleReference:
    """The author's voice profile and the embedding model it was built with."""

    profile: VoiceProfile
    embed: Embed

    def similarity(self, text: str) -> float | None:
        """Style similarity of ``text`` to the profile (-1 to 1), ``None`` for no words."""
        from app.voice.profile import passages

        chunks = passages(text)
        return round(self.profile.similarity(self.embed(chunks)), 4) if chunks else None


class EvaluationSettings(BaseModel):
    """What an evaluation ran with."""

    base_model: str = Field(description="The base GGUF's name.")
    adapter: str = Field(description="The adapter as named by the caller.")
    validation: str = Field(description="The validation file as named by the caller.")
    examples: int = Field(description="Examples evaluated (the first ones of the file).")
    max_tokens: int = Field(description="Completion tokens of each continuation at most.")
    n_ctx: int = Field(description="Context window of the evaluation models, in tokens.")
    temperature: float = Field(0.0, description="Greedy decoding.")
    top_k: int = Field(1, description="Greedy decoding: the most probable token.")
    seed: int = 0
    bleu_signature: str = Field(description="sacrebleu's signature of the corpus BLEU.")


class ContinuationScores(BaseModel):
    """One model on one example."""

    nll_nats: float = Field(description="Summed negative log likelihood of the real next "
                            "passage's tokens, in nats.")
    perplexity: float = Field(description="exp(nll_nats / target_tokens).")
    completion_tokens: int = Field(description="Tokens of the generated continuation.")
    rouge_l: float = Field(description="ROUGE-L F1 of the continuation against the real "
                           "passage (0-1).")
    bleu: float = Field(description="Smoothed sentence BLEU against the real passage (0-100).")
    style_similarity: float | None = Field(description="Cosine to the voice centroid (-1-1).")


class ExampleRow(BaseModel):
    """One example: its tokens and both models' scores."""

    index: int
    source: str | None
    context_tokens: int = Field(description="Context tokens the models saw (cut from the "
                                "start to fit n_ctx).")
    target_tokens: int = Field(description="Tokens of the real next passage scored.")
    reference_style_similarity: float | None = Field(
        description="The real passage's own style similarity: what the author's text scores.")
    base: ContinuationScores
    tuned: ContinuationScores


class ModelMetrics(BaseModel):
    """One model over all examples."""

    model: str
    perplexity: float = Field(description="Token-weighted: exp(sum of NLL / target tokens).")
    nll_nats_per_token: float = Field(description="Mean negative log likelihood per token.")
    target_tokens: int
    rouge_l: float = Field(description="Mean ROUGE-L F1 over the examples (0-1).")
    bleu: float = Field(description="Corpus BLEU of the continuations (0-100).")
    style_similarity: float | None = Field(description="Mean style similarity (-1-1), or "
                                           "None (see style_note).")
    completion_tokens: int
    seconds: float = Field(description="Seconds spent in this model (scoring and generating).")


class Sample(BaseModel):
    """Side by side, for a reader to judge."""

    index: int
    context_excerpt: str = Field(description=f"The context's last {EXCERPT_CHARS} characters.")
    reference: str = Field(description="The real next passage.")
    base: str
    tuned: str


class EvaluationReport(BaseModel):
    """An evaluation's results: settings, each model's metrics, per-example rows, samples."""

    settings: EvaluationSettings
    base: ModelMetrics
    tuned: ModelMetrics
    style_note: str | None = Field(description="Why style similarity is missing, if it is.")
    reference_style_similarity: float | None = Field(
        description="Mean style similarity of the real passages (the author's own level).")
    examples: list[ExampleRow]
    samples: list[Sample]
    seconds: float = Field(description="Wall-clock seconds of the whole evaluation.")


@dataclass(frozen=True)
class _Generated:
    scores: ContinuationScores
    text: str
    seconds: float


@dataclass(frozen=True)
class ExampleResult:
    """One example evaluated on both models (see :meth:`Evaluator.run_example`)."""

    row: ExampleRow
    sample: Sample
    base_text: str
    tuned_text: str
    base_nll: float
    tuned_nll: float
    base_seconds: float
    tuned_seconds: float


def _rouge_l(reference: str, prediction: str) -> float:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return round(float(scorer.score(reference, prediction)["rougeL"].fmeasure), 4)


def _sentence_bleu(reference: str, prediction: str) -> float:
    import sacrebleu

    return round(float(sacrebleu.sentence_bleu(prediction, [reference]).score), 4)


class Evaluator:
    """Runs examples on ``base`` and ``tuned`` (two :class:`Scorer` of the same tokenizer):
    each example's tokens are planned once, then both models score the real passage and
    continue the context greedily for ``max_tokens`` tokens.

    ``style``: the voice profile to compare continuations with, or ``None`` with
    ``style_note`` saying why. Blocking; one example at a time.
    """

    def __init__(self, base: Scorer, tuned: Scorer, *, max_tokens: int,
                 style: StyleReference | None = None, style_note: str | None = None) -> None:
        self.base = base
        self.tuned = tuned
        self.max_tokens = max_tokens
        self.style = style
        self.style_note = style_note if style is None else None
        self.n_ctx = min(base.n_ctx, tuned.n_ctx)

    def plan(self, example: ValidationExample) -> tuple[list[int], list[int]]:
        """The prompt tokens (the context as written, BOS first where the model wants one;
        tokenized apart from the passage, as training does) and target tokens (the real
        passage) of ``example``, cut to fit ``n_ctx``:
        the target to at most half the window, the context from its start so that both the
        target and ``max_tokens`` of continuation fit after it."""
        prompt = self.base.tokenize(example.context, bos=True)
        target = self.base.tokenize(example.continuation, bos=False)[:self.n_ctx // 2]
        room = self.n_ctx - max(len(target), self.max_tokens)
        return prompt[-room:], target

    def _one(self, scorer: Scorer, prompt: list[int], target: list[int],
             reference: str) -> tuple[_Generated, float]:
        started = time.perf_counter()
        logits = scorer.logits([*prompt, *target], first=len(prompt) - 1)[:len(target)]
        nll = float(continuation_nll(logits, target).sum())
        text, completion_tokens = scorer.greedy(prompt, self.max_tokens)
        text = text.strip()
        scores = ContinuationScores(
            nll_nats=round(nll, 4), perplexity=round(perplexity(nll, len(target)), 4),
            completion_tokens=completion_tokens, rouge_l=_rouge_l(reference, text),
            bleu=_sentence_bleu(reference, text),
            style_similarity=self.style.similarity(text) if self.style else None)
        return _Generated(scores, text, time.perf_counter() - started), nll

    def run_example(self, index: int, example: ValidationExample) -> ExampleResult:
        """Evaluate ``example`` (number ``index``) on both models (blocking: two prompt
        evaluations and two generations)."""
        prompt, target = self.plan(example)
        base, base_nll = self._one(self.base, prompt, target, example.continuation)
        tuned, tuned_nll = self._one(self.tuned, prompt, target, example.continuation)
        reference_style = self.style.similarity(example.continuation) if self.style else None
        row = ExampleRow(index=index, source=example.source, context_tokens=len(prompt),
                         target_tokens=len(target),
                         reference_style_similarity=reference_style,
                         base=base.scores, tuned=tuned.scores)
        sample = Sample(index=index, context_excerpt=example.context[-EXCERPT_CHARS:],
                        reference=example.continuation, base=base.text, tuned=tuned.text)
        return ExampleResult(row, sample, base.text, tuned.text, base_nll, tuned_nll,
                             base.seconds, tuned.seconds)

    def report(self, results: Sequence[ExampleResult], *, adapter: str, validation: str,
               seconds: float) -> EvaluationReport:
        """The report of ``results`` (at least one), with what the evaluation ran with."""
        import sacrebleu

        references = [r.sample.reference for r in results]
        tokens = sum(r.row.target_tokens for r in results)
        bleu = sacrebleu.BLEU()

        def metrics(scorer: Scorer, which: str) -> ModelMetrics:
            rows = [getattr(r.row, which) for r in results]
            texts = [getattr(r, f"{which}_text") for r in results]
            nll = sum(getattr(r, f"{which}_nll") for r in results)
            styles = [s.style_similarity for s in rows if s.style_similarity is not None]
            return ModelMetrics(
                model=scorer.name, perplexity=round(perplexity(nll, tokens), 4),
                nll_nats_per_token=round(nll / tokens, 4), target_tokens=tokens,
                rouge_l=round(float(np.mean([s.rouge_l for s in rows])), 4),
                bleu=round(float(bleu.corpus_score(texts, [references]).score), 4),
                style_similarity=round(float(np.mean(styles)), 4) if styles else None,
                completion_tokens=sum(s.completion_tokens for s in rows),
                seconds=round(sum(getattr(r, f"{which}_seconds") for r in results), 3))

        base, tuned = metrics(self.base, "base"), metrics(self.tuned, "tuned")
        own = [r.row.reference_style_similarity for r in results
               if r.row.reference_style_similarity is not None]
        settings = EvaluationSettings(
            base_model=self.base.name.split("+")[0], adapter=adapter, validation=validation,
            examples=len(results), max_tokens=self.max_tokens, n_ctx=self.n_ctx,
            bleu_signature=str(bleu.get_signature()))
        return EvaluationReport(
            settings=settings, base=base, tuned=tuned, style_note=self.style_note,
            reference_style_similarity=round(float(np.mean(own)), 4) if own else None,
            examples=[r.row for r in results], samples=[r.sample for r in results],
            seconds=round(seconds, 3))


def check_base(model_path: Path | None, adapter_path: Path) -> Path:
    """The base model's path (``None``: the embedded model), once the adapter at
    ``adapter_path`` is checked to be made for it (:func:`app.finetune.export.check_adapter`:
    architecture and base file SHA-256). Blocking: hashes the base file once per process.

    Raises:
        InvalidAdapter: the adapter is not a GGUF LoRA adapter.
        AdapterMismatch: it records another base model, or none.
        ModelUnavailable: the base file is missing or not GGUF.
    """
    from app.finetune.export import check_adapter
    from app.llm.llama import default_model_path

    path = model_path or default_model_path()
    check_adapter(adapter_path, path)
    return path


def open_scorers(model_path: Path | None, adapter_path: Path, n_ctx: int,
                 n_threads: int | None = None) -> tuple[Scorer, Scorer]:
    """The base model at ``model_path`` (``None``: the embedded model) and the same with the
    adapter at ``adapter_path``, opened for scoring with ``n_ctx`` tokens of window
    (blocking: about a second each), once the adapter is checked to be made for this base
    (:func:`check_base`).

    Raises:
        ModelUnavailable: the base model cannot be loaded.
        InvalidAdapter: the adapter is not a GGUF LoRA adapter, or llama.cpp refuses it.
        AdapterMismatch: the adapter was made for another base model.
    """
    from app.llm.llama import LlamaScorer  # llama.cpp only when a model is opened

    path = check_base(model_path, adapter_path)
    base = LlamaScorer.load(path, n_ctx=n_ctx, n_threads=n_threads)
    try:
        tuned = LlamaScorer.load(path, adapter_path, n_ctx=n_ctx, n_threads=n_threads)
    except BaseException:
        base.close()
        raise
    return base, tuned


def voice_style(voices: VoiceProfiles, archive: Archive | None
                ) -> tuple[StyleReference | None, str | None]:
    """The style reference of ``archive``'s voice profile, or ``None`` and why not (the
    archive is off, no file is tagged as the author's, the store failed). Blocking: reads
    Chroma and may build the profile."""
    from app.errors import WriterAssistantError

    if archive is None:
        return None, ("The archive is off or not loaded, so there is no voice profile or "
                      "embedding model to compare with (ARCHIVE_ENABLED).")
    try:
        profile = voices.profile(archive)
    except WriterAssistantError as error:
        return None, error.message
    return StyleReference(profile, archive.embedder.embed), None


def evaluate(base: Scorer, tuned: Scorer, examples: Sequence[ValidationExample], *,
             adapter: str, validation: str, max_tokens: int = DEFAULT_MAX_TOKENS,
             style: StyleReference | None = None, style_note: str | None = None,
             progress: Callable[[int, int], None] | None = None) -> EvaluationReport:
    """Evaluate ``examples`` (at least one) on ``base`` and ``tuned`` in one go (blocking;
    the command line's way; the service runs :class:`Evaluator` one example per turn).
    ``progress(done, total)`` is called after each example."""
    started = time.perf_counter()
    evaluator = Evaluator(base, tuned, max_tokens=max_tokens, style=style,
                          style_note=style_note)
    results = []
    for index, example in enumerate(examples):
        results.append(evaluator.run_example(index, example))
        if progress is not None:
            progress(index + 1, len(examples))
    return evaluator.report(results, adapter=adapter, validation=validation,
                            seconds=time.perf_counter() - started)


#: The chart's panels: (title, ModelMetrics field, what is better).
CHART_PANELS = (("Perplexity", "perplexity", "lower is better"),
                ("ROUGE-L F1", "rouge_l", "higher is better"),
                ("BLEU", "bleu", "higher is better"),
                ("Style similarity", "style_similarity", "closer to the author's"))


def write_chart(report: EvaluationReport, path: Path) -> Path:
    """Draw ``report``'s metrics, base against tuned, one panel per metric
    (:data:`CHART_PANELS`), as a PNG at ``path`` (matplotlib's Agg canvas, no display and no
    pyplot state, so safe in worker threads). Style similarity shows the real passages' own
    level as a dashed line; when it is missing the panel says why. Returns ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 3.2), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(CHART_PANELS))
    labels = ["base", "tuned"]
    for ax, (title, name, better) in zip(axes, CHART_PANELS, strict=True):
        values = [getattr(report.base, name), getattr(report.tuned, name)]
        ax.set_title(f"{title}\n({better})", fontsize=9)
        if None in values:
            ax.text(0.5, 0.5, "n/a\n" + (report.style_note or "")[:60], ha="center",
                    va="center", wrap=True, fontsize=8, transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        bars = ax.bar(labels, values, color=["#8c8c8c", "#3a7bd5"])
        ax.bar_label(bars, fmt="%.3g", fontsize=8)
        if name == "style_similarity" and report.reference_style_similarity is not None:
            ax.axhline(report.reference_style_similarity, linestyle="--", color="#444",
                       linewidth=1, label="real passages")
            ax.legend(fontsize=7, loc="lower right")
    figure.suptitle(f"base ({report.settings.base_model}) vs tuned (+ "
                    f"{report.settings.adapter}), {report.settings.examples} examples",
                    fontsize=10)
    figure.savefig(path, format="png", dpi=100)
    return path


def write_outputs(report: EvaluationReport, directory: Path) -> tuple[Path, Path]:
    """Write ``report.json`` and ``chart.png`` into ``directory`` (created if missing); return
    their paths.

    Raises:
        OSError: the directory cannot be written.
    """
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / "report.json"
    json_path.write_text(report.model_dump_json(indent=2), encoding="utf-8")
    return json_path, write_chart(report, directory / "chart.png")
