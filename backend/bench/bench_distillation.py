"""Distillation benchmark: context assembly over long stories, cold and warm, in one run.

Story contexts are cut from the shared corpus (The Adventures of Sherlock Holmes, in chapters
of about 3,000 tokens) to the sizes asked for. For each size it prints:

* cold: the first ``generate-chapter`` preparation with an empty summary cache on the real
  embedded model: LLM calls, seconds;
* warm: the same preparation again (every summary cached): LLM calls (0), milliseconds, and
  the warm/cold time ratio.

Cold runs on the 2-core CPU take about 20 s per chapter summarized, so the default sizes are
10,000 and 40,000 tokens; ``--sizes 10000 100000`` adds the 100,000-token case (about 15
minutes). ``--warm-only`` fills the cache with a fast stand-in summarizer (first words of the
text, counted with the real tokenizer) to time warm assembly alone at any size.

    cd backend && python -m bench.bench_distillation [--sizes 10000 100000] [--warm-only]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import tempfile
import time
from pathlib import Path

from app.agents.registry import REGISTRY
from app.agents.runner import AgentRunner, RunnerSettings
from app.config import Settings
from app.context.summaries import SUMMARIZER_ROLE, SummaryCache
from app.llm.llama import LlamaRuntime
from app.llm.protocol import Completion
from app.llm.scheduler import Scheduler
from app.observability.metrics import Metrics
from app.schemas.requests import GenerateChapterRequest

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus"
SHERLOCK = CORPUS / "doyle-adventures-of-sherlock-holmes.txt"
CHAPTER_TOKENS = 3000


def story_chapters(runtime: LlamaRuntime, total_tokens: int) -> list[dict[str, object]]:
    """Chapters of about CHAPTER_TOKENS tokens from the Sherlock text, ``total_tokens`` in all."""
    text = SHERLOCK.read_text(encoding="utf-8")
    # the first story heading (after any contents list), up to a Gutenberg licence if present
    start = max(0, text.find("I. A SCANDAL IN BOHEMIA"))
    end = text.find("*** END OF THE PROJECT GUTENBERG")
    end = end if end != -1 else len(text)
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text[start:end]) if p.strip()]
    chapters, current, size, used = [], [], 0, 0
    for paragraph in paragraphs:
        tokens = runtime.count_tokens(paragraph) + 1
        if used + tokens > total_tokens:
            break
        current.append(paragraph)
        size += tokens
        used += tokens
        if size >= CHAPTER_TOKENS:
            chapters.append(current)
            current, size = [], 0
    if current:
        chapters.append(current)
    return [{"number": i + 1, "title": "", "content": "\n\n".join(body)}
            for i, body in enumerate(chapters)]


class StandInSummarizer:
    """Wraps the runtime: summarization calls answer with the first words of the text."""

    def __init__(self, runtime: LlamaRuntime) -> None:
        self.runtime = runtime

    def __getattr__(self, name: str):
        return getattr(self.runtime, name)

    async def stream(self, messages, params, prefix=None):
        if not messages[0].content.startswith(SUMMARIZER_ROLE):
            async for item in self.runtime.stream(messages, params, prefix):
                yield item
            return
        text = messages[-1].content.split("Text:\n", 1)[1]
        words = text.split()[: int(params.max_tokens * 0.6)]
        yield Completion(" ".join(words), 0, len(words), "stop")


async def measure(runtime: LlamaRuntime, sizes: list[int], warm_only: bool) -> None:
    spec = REGISTRY["generate-chapter"]
    rows = []
    for size in sizes:
        chapters = story_chapters(runtime, size)
        request = GenerateChapterRequest.model_validate({
            "structured_context": {"chapters": chapters,
                                   "plot_elements": [{"type": "plot_point", "priority": "high",
                                                      "content": "Holmes takes a new case."}]},
            "max_tokens": 256,
        })
        story_tokens = sum(runtime.count_tokens(c["content"]) for c in chapters)
        with tempfile.TemporaryDirectory() as cache_dir:
            settings = Settings(summary_cache_dir=Path(cache_dir), generation_timeout_s=86_400)
            generator = StandInSummarizer(runtime) if warm_only else runtime
            cache = SummaryCache(settings.distillation.cache_dir,
                                 settings.distillation.cache_max_bytes, runtime.model_name)
            runner = AgentRunner(RunnerSettings.of(settings), generator, Scheduler(8, 3600),
                                 Metrics(), summary_cache=cache)
            start = time.perf_counter()
            cold = await runner.preview(spec, request)
            cold_s = time.perf_counter() - start
            warm_times = []
            for _ in range(5):
                start = time.perf_counter()
                warm = await runner.preview(spec, request)
                warm_times.append(time.perf_counter() - start)
            cache.close()
        report = cold.prompt.report
        rows.append((size, story_tokens, len(chapters), report.distillation.llm_calls, cold_s,
                     warm.prompt.report.distillation.llm_calls, min(warm_times),
                     len(report.summaries), report.prompt_tokens))
    print(f"model {runtime.model_name}, n_ctx {runtime.n_ctx}, "
          f"{'stand-in summarizer (warm timing only)' if warm_only else 'real summaries'}")
    print(f"{'story tokens':>12} {'chapters':>8} {'cold calls':>10} {'cold s':>8} "
          f"{'warm calls':>10} {'warm ms':>8} {'warm/cold':>9} {'summaries':>9} {'prompt':>7}")
    for _size, tokens, n, calls, cold_s, warm_calls, warm_s, summaries, prompt in rows:
        print(f"{tokens:>12} {n:>8} {calls:>10} {cold_s:>8.1f} {warm_calls:>10} "
              f"{warm_s * 1000:>8.0f} {warm_s / cold_s:>9.4f} {summaries:>9} {prompt:>7}")
    if len(rows) > 1:
        print(f"warm assembly time, largest/smallest story: {rows[-1][6] / rows[0][6]:.1f}x for "
              f"{rows[-1][1] / rows[0][1]:.1f}x the tokens")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 40_000])
    parser.add_argument("--warm-only", action="store_true")
    args = parser.parse_args()
    runtime = LlamaRuntime.load(Settings().model)
    asyncio.run(measure(runtime, args.sizes, args.warm_only))


if __name__ == "__main__":
    main()
