"""Variants: ``n`` drafts of one prose request with different seeds, each scored, returned
ranked.

The scores of a variant (all in [0, 1] but style similarity, a cosine in [-1, 1]):

- **style similarity**: the cosine between the variant's mean passage embedding and the
  author's voice profile (its embedding centroid, :mod:`app.voice`); ``None`` without a
  profile or an embedding model.
- **novelty**: one minus the largest overlap with the story so far, measured two ways:
  by embedding (one minus the highest cosine between any passage of the variant and any
  passage of the story's chapters) and by n-grams (one minus the largest share of the
  variant's word 3-grams found in one chapter, the containment measure of Broder, "On the
  resemblance and containment of documents", 1997). ``novelty`` is the lower of the two.
- **length fit**: ``1 - |words - target_words| / target_words`` (floored at 0); ``None``
  without ``target_words``.
- **rater score**: the rater agent's 1-10 score of the variant, when the request asks
  (``rate_variants``).

``overall`` is the mean of the available scores (style similarity floored at 0, the rater's
divided by 10); variants are ranked by it, best first.

Each variant is an ordinary agent call through the runner with its own seed, on the same
prompt: after the first, the prompt's KV state is reused from the prefix cache.
"""

from __future__ import annotations

import random
import re
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.agents.events import DONE, PROGRESS, TOKEN, Events, done_fields, quality, response_body
from app.agents.runner import AgentRunner, Meta, Progress
from app.agents.spec import AgentResult, AgentSpec
from app.errors import GenerationFailed
from app.llm.protocol import TokenDelta
from app.schemas.requests import RaterFeedbackRequest
from app.schemas.responses import Variant, VariantScores
from app.schemas.usage import Usage

#: Event name of a finished variant in a stream.
VARIANT = "variant"

#: Words per passage embedded: all-MiniLM-L6-v2 reads at most 256 word pieces, about 190
#: English words; 150 keeps a passage whole.
PASSAGE_WORDS = 150
#: n of the word n-grams of the novelty measure.
NGRAM = 3

_WORD = re.compile(r"[A-Za-z0-9']+")

#: Embeds texts to unit-length rows of shape ``(len(texts), dimension)``.
Embed = Callable[[Sequence[str]], np.ndarray]


def words(text: str) -> list[str]:
    """The lower-cased words of ``text``."""
    return [w.lower() for w in _WORD.findall(text)]


def passages(text: str, size: int = PASSAGE_WORDS) -> list[str]:
    """``text`` cut into passages of about ``size`` words (whitespace-separated)."""
    tokens = text.split()
    return [" ".join(tokens[i:i + size]) for i in range(0, len(tokens), size)]


def ngram_containment(text: str, source: str, n: int = NGRAM) -> float:
    """The share of ``text``'s word n-grams that also occur in ``source`` (0 when ``text`` has
    none)."""
    mine = _ngrams(words(text), n)
    if not mine:
        return 0.0
    return len(mine & _ngrams(words(source), n)) / len(mine)


def _ngrams(tokens: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def length_fit(text: str, target_words: int | None) -> float | None:
    """``1 - |words - target| / target``, floored at 0; ``None`` without a target."""
    if not target_words:
        return None
    return max(0.0, 1.0 - abs(len(text.split()) - target_words) / target_words)


@dataclass(frozen=True)
class Scorer:
    """Scores variants against the story (``story``: its chapters' texts) and the author's
    voice (``voice``: the unit-length embedding centroid, or ``None``) with ``embed`` (or
    without embeddings when ``None``)."""

    story: Sequence[str]
    embed: Embed | None = None
    voice: np.ndarray | None = None

    def score(self, text: str, target_words: int | None,
              rater_score: int | None = None) -> VariantScores:
        """The scores of ``text`` (see the module)."""
        ngram = 1.0 - max((ngram_containment(text, chapter) for chapter in self.story),
                          default=0.0)
        style = novelty_embedding = None
        if self.embed is not None and text.strip():
            mine = self.embed(passages(text))
            if self.voice is not None:
                centroid = mine.mean(axis=0)
                style = float(centroid @ self.voice / (np.linalg.norm(centroid) or 1.0))
            story = [p for chapter in self.story for p in passages(chapter)]
            if story:
                novelty_embedding = 1.0 - float((mine @ self.embed(story).T).max())
        novelty = min(ngram, novelty_embedding) if novelty_embedding is not None else ngram
        fit = length_fit(text, target_words)
        parts = [max(0.0, style) if style is not None else None, novelty, fit,
                 rater_score / 10 if rater_score is not None else None]
        available = [p for p in parts if p is not None]
        return VariantScores(
            style_similarity=_round(style), novelty=round(novelty, 4),
            novelty_embedding=_round(novelty_embedding), novelty_ngram=round(ngram, 4),
            length_fit=_round(fit), rater_score=rater_score,
            overall=round(sum(available) / len(available), 4))


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def seeds(request: Any, n: int) -> list[int]:
    """The seeds of ``n`` variants: the request's seed and the next ones, or random ones."""
    first = request.seed if request.seed is not None else random.randrange(2**31 - n)
    return [(first + i) % 2**31 for i in range(n)]


class Variants:
    """``n`` drafts of a prose operation, scored and ranked (see the module).

    ``scorer`` builds the :class:`Scorer` for a request (it may embed the story: call it off
    the event loop, it is run on the runner's threads); ``registry`` gives the rater when a
    request asks for its scores.
    """

    def __init__(self, runner: AgentRunner, registry: Mapping[str, AgentSpec],
                 scorer: Callable[[Any], Scorer]) -> None:
        self.runner = runner
        self.rater = registry.get("rater-feedback")
        self.scorer = scorer

    async def stream(self, spec: AgentSpec, request: Any) -> Events:
        """The variants' events: per variant a ``progress`` (``stage: "variant"``), the
        first variant's ``meta``, its ``token``s (each with its ``variant`` index) and a
        ``variant`` event with its text and scores; last ``done``: the best variant's done
        fields plus ``variants``, ranked. The first variant is prepared before this returns,
        so bad input is a plain error answer.

        Raises:
            what :meth:`AgentRunner.stream` raises for the first variant.
        """
        return await self._start(spec, request, {})

    async def _start(self, spec: AgentSpec, request: Any, out: dict[str, Any]) -> Events:
        chosen = seeds(request, request.n)
        first = await self.runner.stream(spec, _with_seed(request, chosen[0]))
        return self._events(spec, request, chosen, first, out)

    async def run(self, spec: AgentSpec, request: Any) -> dict[str, Any]:
        """The JSON body: the best variant's response body plus ``variants``, ranked.

        Raises what :meth:`stream` and the generations raise.
        """
        out: dict[str, Any] = {}
        events = await self._start(spec, request, out)
        try:
            async for name, _data in events:
                if name == DONE:
                    return dict(out["response"])
        finally:
            await events.aclose()
        raise GenerationFailed("the variants ended without a result")

    async def _events(self, spec: AgentSpec, request: Any, chosen: list[int],
                      first: AsyncGenerator[Any, None], out: dict[str, Any]) -> Events:
        """The events of :meth:`stream`; ``out["response"]`` gets the JSON body before
        ``done``."""
        results: list[tuple[AgentResult, Variant]] = []
        scorer = await self.runner.off_loop(self.scorer, request)
        items: AsyncGenerator[Any, None] | None = first
        try:
            for index, seed in enumerate(chosen):
                if items is None:
                    items = await self.runner.stream(spec, _with_seed(request, seed))
                yield PROGRESS, {"stage": "variant", "variant": index, "seed": seed}
                result: AgentResult | None = None
                async for item in items:
                    if isinstance(item, TokenDelta):
                        yield TOKEN, {"text": item.text, "variant": index}
                    elif isinstance(item, Progress):
                        yield PROGRESS, {**item.data, "variant": index}
                    elif isinstance(item, Meta) and index == 0:
                        stamp = item.generation.fields() if item.generation else {}
                        yield "meta", {**stamp, **item.echo, "context_metadata":
                                       item.report.model_dump(mode="json")}
                    elif isinstance(item, AgentResult):
                        result = item
                await items.aclose()
                items = None
                if result is None:
                    raise GenerationFailed("a variant's stream ended without a result")
                rating = await self._rate(request, result.text) if request.rate_variants \
                    else None
                scores = await self.runner.off_loop(
                    scorer.score, result.text, getattr(request, "target_words", None), rating)
                variant = Variant(index=index, seed=seed, text=result.text.strip(), rank=0,
                                  generation_id=(result.generation.generation_id
                                                 if result.generation else None),
                                  scores=scores, quality=quality(result),  # type: ignore[arg-type]
                                  usage=Usage.of(result.completion))
                results.append((result, variant))
                yield VARIANT, variant.model_dump(mode="json", exclude={"rank"})
        finally:
            if items is not None:
                await items.aclose()
        ranked = sorted(results, key=lambda pair: (-pair[1].scores.overall, pair[1].index))
        variants = [replace_rank(v, rank) for rank, (_, v) in enumerate(ranked, 1)]
        best = ranked[0][0]
        listed = [v.model_dump(mode="json") for v in variants]
        out["response"] = spec.response_model.model_validate(
            {**response_body(best), "variants": listed}).model_dump(mode="json")
        yield DONE, {**done_fields(best), "variants": listed}

    async def _rate(self, request: Any, text: str) -> int | None:
        """The rater's 1-10 score of ``text`` on the request's story."""
        if self.rater is None:
            return None
        result = await self.runner.run(self.rater, RaterFeedbackRequest(
            structured_context=request.structured_context,
            context_processing_config=request.context_processing_config, plot_point=text))
        return int(getattr(result.output, "score"))  # noqa: B009 - output: BaseModel


def replace_rank(variant: Variant, rank: int) -> Variant:
    """``variant`` with its rank (1: best)."""
    return variant.model_copy(update={"rank": rank})


def _with_seed(request: Any, seed: int) -> Any:
    """``request`` for one variant: its seed, n = 1; the response cache only when the caller
    chose the seeds (drawn ones never repeat)."""
    return request.model_copy(update={"seed": seed, "n": 1,
                                      "cache": request.cache and request.seed is not None})

