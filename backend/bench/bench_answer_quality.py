"""Answer quality benchmark: the share of useful answers before and after the runner's
quality checks, on the real embedded model, per agent.

The operations run in this process through ``app.agents.runner.AgentRunner`` as the service
builds it (``app.bootstrap.build_runner``) on ``LlamaRuntime.load(Settings().model)``, the
archive off and the summary cache in a temporary directory. Stories: Alice (chapters 1-2,
``examples/alice_context.py``; chapter 3, "A Caucus-Race and a Long Tale", is written) and
Holmes ("A Scandal in Bohemia" part I, ``examples/holmes_context.py``; part II is written).
Agents: generate-chapter, editor-review (of the story's last chapter, by number),
rater-feedback and character-feedback (Alice; Sherlock Holmes), each with ``--seeds`` seeds
(1, 2, ...) at the agent's default temperature, ``--json-max-tokens`` for the JSON agents and
``--prose-max-tokens`` for the writer. Calls run story by story so every agent reuses its
story's shared block (the first call of a story processes it whole).

Per call, every model call the runner makes for the operation is recorded (a recording proxy
around the model; the distiller's summaries are left out), so:

- *before*: the first attempt's raw text, judged by the checks: for a JSON agent it must parse
  and validate against the output model, then pass ``app.agents.quality.check_output``
  against the task's instruction; for the writer it must pass ``check_prose``. This is what
  the author got with no quality loop.
- *repair only* (writer): the first attempt after ``repair_prose`` (cut a loop, strip a
  preamble): what repairing alone, with no retry, would give.
- *after*: what ``runner.run`` returned (its ``output`` through ``check_output``, its ``text``
  through ``check_prose``); an error (e.g. ``agent_output_invalid``) counts as not useful.

``--retries N`` builds the runner with ``Settings(quality_max_retries=N)``; ``--retries 0``
gives the runner without its quality loop (after is then the JSON repair attempt only). Left
out, the setting keeps its default. It fails at once if this tree's Settings has no such
setting.

    cd backend && python bench/bench_answer_quality.py                # 3 seeds, ~10 minutes
    cd backend && python bench/bench_answer_quality.py --seeds 1 --show
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

BACKEND = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BACKEND / "examples"))
sys.path.insert(0, str(BACKEND))

from alice_context import build_request as alice_request  # noqa: E402 - after the path insert
from holmes_context import build_request as holmes_request  # noqa: E402

from app.agents import quality  # noqa: E402
from app.agents.registry import REGISTRY  # noqa: E402
from app.agents.runner import AgentRunner  # noqa: E402
from app.agents.spec import AgentSpec  # noqa: E402
from app.bootstrap import build_runner, close_runner  # noqa: E402
from app.config import Settings  # noqa: E402
from app.errors import WriterAssistantError  # noqa: E402
from app.llm.protocol import (  # noqa: E402
    ChatMessage,
    Completion,
    SamplingParams,
    SharedPrefix,
    StreamItem,
    TextGenerator,
)
from app.llm.scheduler import Scheduler  # noqa: E402
from app.observability.metrics import Metrics  # noqa: E402

AGENTS = ("generate-chapter", "editor-review", "rater-feedback", "character-feedback")


@dataclass(frozen=True)
class Story:
    name: str
    context: dict[str, Any]
    writer: dict[str, Any]
    last_chapter: int
    character: str
    character_plot_point: str
    rater_plot_point: str


def load_stories() -> list[Story]:
    alice = alice_request(chapters=2)
    alice.update(chapter_number=3, title="A Caucus-Race and a Long Tale",
                 plot_point="The Dodo has the wet animals and Alice run a Caucus-race to get "
                            "dry; everyone wins, and the Mouse tells its long and sad tale.")
    holmes = holmes_request(chapters=1)
    return [
        Story("alice", alice["structured_context"], alice, 2, "Alice",
              "Alice, nine feet tall, hears the White Rabbit's feet pattering in the distance "
              "and calls to him for help.",
              "Alice cries a pool of tears, shrinks and swims in it with a Mouse who is "
              "frightened of cats."),
        Story("holmes", holmes["structured_context"], holmes, 1, "Sherlock Holmes",
              "Disguised as a groom, Holmes is called in as the witness of Irene Adler's "
              "hurried wedding at the Church of St. Monica.",
              "Holmes plans a false alarm of fire so that Irene Adler betrays where she hides "
              "the photograph."),
    ]


def request_body(story: Story, operation: str, seed: int, args: argparse.Namespace
                 ) -> dict[str, Any]:
    common = {"structured_context": story.context, "seed": seed,
              "max_tokens": args.json_max_tokens}
    if operation == "generate-chapter":
        return {**story.writer, "seed": seed, "max_tokens": args.prose_max_tokens}
    if operation == "editor-review":
        return {**common, "chapter_number": story.last_chapter}
    if operation == "rater-feedback":
        return {**common, "plot_point": story.rater_plot_point}
    if operation == "character-feedback":
        return {**common, "character_name": story.character,
                "plot_point": story.character_plot_point}
    raise SystemExit(f"no request for {operation}")


# --- recording the runner's model calls ----------------------------------------------------


@dataclass
class Call:
    messages: list[ChatMessage]
    params: SamplingParams
    completion: Completion


@dataclass
class Recorder:
    """A :class:`TextGenerator` that passes everything to ``inner`` and keeps each finished
    call's messages, sampling and completion."""

    inner: TextGenerator
    calls: list[Call] = field(default_factory=list)

    @property
    def n_ctx(self) -> int:
        return self.inner.n_ctx

    @property
    def model_name(self) -> str:
        return self.inner.model_name

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def render_prompt(self, messages: Sequence[ChatMessage]) -> str:
        return self.inner.render_prompt(messages)

    def count_prompt_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return self.inner.count_prompt_tokens(messages)

    def count_prefix_tokens(self, messages: Sequence[ChatMessage], shared: int) -> int:
        return self.inner.count_prefix_tokens(messages, shared)

    async def generate(self, messages: Sequence[ChatMessage], params: SamplingParams,
                       prefix: SharedPrefix | None = None) -> Completion:
        completion = await self.inner.generate(messages, params, prefix)
        self.calls.append(Call(list(messages), params, completion))
        return completion

    async def stream(self, messages: Sequence[ChatMessage], params: SamplingParams,
                     prefix: SharedPrefix | None = None) -> AsyncGenerator[StreamItem, None]:
        stream = self.inner.stream(messages, params, prefix)
        try:
            async for item in stream:
                if isinstance(item, Completion):
                    self.calls.append(Call(list(messages), params, item))
                yield item
        finally:
            await stream.aclose()


# --- judging -------------------------------------------------------------------------------


def judge_json(model: type[BaseModel], completion: Completion, instruction: str) -> list[str]:
    """Why a raw JSON answer is not useful (empty: useful)."""
    if completion.finish_reason != "stop":
        return [f"cut off ({completion.finish_reason})"]
    try:
        output = model.model_validate(json.loads(completion.text, strict=False))
    except (json.JSONDecodeError, ValidationError) as error:
        return [f"invalid: {str(error).splitlines()[0][:80]}"]
    return [str(problem) for problem in quality.check_output(output, instruction)]


def judge_prose(text: str) -> list[str]:
    return [str(problem) for problem in quality.check_prose(text.strip()).problems]


@dataclass
class Outcome:
    story: str
    operation: str
    seed: int
    before: list[str]
    after: list[str]
    repaired: list[str] | None  # the writer's first attempt after repair_prose alone
    calls: int
    attempts: int
    seconds: float
    first_text: str
    final_text: str


def _attempts(result: Any) -> int:
    attempts = getattr(result, "attempts", 1)
    return attempts if isinstance(attempts, int) else len(attempts)


async def run_one(runner: AgentRunner, recorder: Recorder, spec: AgentSpec, story: Story,
                  seed: int, body: dict[str, Any]) -> Outcome:
    request = spec.request_model.model_validate(body)
    task = spec.build_task(request)
    output_model = spec.output_model_for(request)
    recorder.calls.clear()
    started = time.perf_counter()
    result = error = None
    try:
        result = await runner.run(spec, request)
    except WriterAssistantError as failure:
        error = f"{failure.code}: {str(failure)[:100]}"
    seconds = time.perf_counter() - started
    # the operation's own model calls (not the distiller's): its role opens its messages
    calls = [call for call in recorder.calls
             if any(spec.role in message.content for message in call.messages)]
    if not calls:
        raise SystemExit(f"{spec.operation}: the runner made no model call for it ({error})")
    first = calls[0].completion
    repaired: list[str] | None = None
    if output_model is None:
        before = judge_prose(first.text)
        fixed = quality.repair_prose(first.text.strip())
        repaired = judge_prose(fixed.text)
        after = [error] if error else judge_prose(result.text if result else "")
    else:
        before = judge_json(output_model, first, task.text)
        if error or result is None or result.output is None:
            after = [error or "no output"]
        else:
            after = [str(p) for p in quality.check_output(result.output, task.text)]
    return Outcome(story.name, spec.operation, seed, before, after, repaired, len(calls),
                   _attempts(result) if result else len(calls), seconds, first.text,
                   result.text if result else "")


# --- report --------------------------------------------------------------------------------


def _mark(problems: list[str]) -> str:
    return "NOT useful" if problems else "ok"


def _share(flags: list[bool]) -> str:
    return f"{sum(flags)}/{len(flags)} ({100 * sum(flags) / len(flags):.0f}%)" if flags else "-"


def print_table(outcomes: list[Outcome]) -> None:
    header = (f"{'agent':<20} {'story':<7} {'useful before':>14} {'repair only':>12} "
              f"{'useful after':>14} {'calls':>6} {'s/call':>7}")
    print(header)
    print("-" * len(header))
    groups: dict[tuple[str, str], list[Outcome]] = {}
    for outcome in outcomes:
        groups.setdefault((outcome.operation, outcome.story), []).append(outcome)
        groups.setdefault((outcome.operation, "all"), []).append(outcome)
    for (operation, story), group in sorted(groups.items(),
                                            key=lambda item: (item[0][0], item[0][1] == "all",
                                                              item[0][1])):
        repaired = [not o.repaired for o in group if o.repaired is not None]
        print(f"{operation:<20} {story:<7} {_share([not o.before for o in group]):>14} "
              f"{_share(repaired):>12} {_share([not o.after for o in group]):>14} "
              f"{sum(o.calls for o in group) / len(group):>6.2f} "
              f"{sum(o.seconds for o in group) / len(group):>7.1f}")
    print(f"{'all agents':<20} {'all':<7} {_share([not o.before for o in outcomes]):>14} "
          f"{'':>12} {_share([not o.after for o in outcomes]):>14}")


def print_criteria() -> None:
    floors = ", ".join(f"{model.__name__}.{name}>={floor.words}"
                       + ("" if floor.letters else " (digits ok)")
                       for (model, name), floor in quality.FLOORS.items())
    print(f"""
Criteria (app/agents/quality.py):
  JSON agents: the answer parses and validates against the output model (the first attempt
  must also have ended on its own, not at max_tokens), and check_output finds nothing:
  every text field has a letter, no run of {quality.DIGIT_RUN}+ digits, is no placeholder
  ("string", "N/A"...), no copy of a field name / schema text / a {quality.COPY_WORDS}+ word
  piece of the instruction, and has at least its floor of words ({floors}; others
  >={quality.DEFAULT_FLOOR.words}; numbers and enums exempt); no object whose text fields
  all say the same; no list whose items are all the same.
  Writer (prose): check_prose finds nothing: letters; no loop (a run of words whose every
  {quality.LOOP_NGRAM}-gram was said within {quality.LOOP_WINDOW} words, over
  >= max({quality.LOOP_MIN_WORDS}, min(2 x period, {quality.LOOP_MAX_NEEDED})) words; a
  3+ word sentence {quality.SENTENCE_REPEATS}x; 1-4 characters {quality.CHAR_REPEATS}x in a
  row); no assistant preamble at the start ("Sure", "I'm here to help", "Here's", "As an
  AI"...); at least {quality.MIN_PROSE_WORDS} words.""")


def print_failures(outcomes: list[Outcome]) -> None:
    for o in outcomes:
        if o.before or o.after:
            print(f"\n--- {o.operation} {o.story} seed {o.seed}: before {o.before or 'useful'}"
                  f"; after {o.after or 'useful'}")
            print(f"first attempt: {o.first_text[:400]!r}")
            if o.calls > 1 or o.final_text != o.first_text:
                print(f"final: {o.final_text[:400]!r}")


# --- main ----------------------------------------------------------------------------------


def settings_for(args: argparse.Namespace, cache_dir: Path) -> Settings:
    """The service's settings with the archive off, no per-user limits, the summary cache in
    ``cache_dir`` and, with ``--retries``, ``quality_max_retries``."""
    extra: dict[str, Any] = {}
    if args.retries is not None:
        extra["quality_max_retries"] = args.retries
    if args.threads is not None:
        extra["llm_n_threads"] = args.threads
    try:
        return Settings(summary_cache_dir=cache_dir, archive_enabled=False,
                        rate_limit_per_minute=0, rate_limit_concurrent=0, **extra)
    except ValidationError as error:
        if "quality_max_retries" in str(error):
            raise SystemExit("--retries needs the QUALITY_MAX_RETRIES setting "
                             "(Settings(quality_max_retries=...)), which this tree lacks: run "
                             "without --retries, or once the runner's quality loop has landed."
                             ) from None
        raise SystemExit(f"settings refused: {error}") from None


async def run(args: argparse.Namespace) -> list[Outcome]:
    from app.llm.llama import LlamaRuntime  # the only llama_cpp import; loads in seconds

    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        settings = settings_for(args, Path(tmp) / "summaries")
        model = LlamaRuntime.load(settings.model)
        recorder = Recorder(model)
        limits = settings.limits
        scheduler = Scheduler(limits.queue_max_waiting, limits.queue_max_wait_s)
        runner = build_runner(settings, recorder, scheduler, Metrics())
        outcomes: list[Outcome] = []
        try:
            for story in load_stories():
                if story.name not in args.stories:
                    continue
                for seed in range(1, args.seeds + 1):
                    for operation in args.agents:
                        spec = REGISTRY[operation]
                        outcome = await run_one(runner, recorder, spec, story, seed,
                                                request_body(story, operation, seed, args))
                        outcomes.append(outcome)
                        print(f"{story.name:<7} seed {seed} {operation:<20} before "
                              f"{_mark(outcome.before):<10} after {_mark(outcome.after):<10} "
                              f"calls {outcome.calls} {outcome.seconds:5.1f}s", flush=True)
        finally:
            close_runner(runner)
            await model.aclose()
        return outcomes


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds per agent and story")
    parser.add_argument("--agents", default=",".join(AGENTS),
                        help="operations, comma-separated (default: %(default)s)")
    parser.add_argument("--stories", default="alice,holmes", help="alice, holmes or both")
    parser.add_argument("--json-max-tokens", type=int, default=300)
    parser.add_argument("--prose-max-tokens", type=int, default=200)
    parser.add_argument("--retries", type=int, default=None,
                        help="QUALITY_MAX_RETRIES for the runner (default: the setting's)")
    parser.add_argument("--threads", type=int, default=None,
                        help="LLM_N_THREADS (default: the setting's; on a busy machine 1 "
                             "decodes far faster than spinning threads that share its cores)")
    parser.add_argument("--show", action="store_true", help="print the texts not useful")
    args = parser.parse_args()
    args.agents = [a for a in args.agents.split(",") if a]
    args.stories = {s for s in args.stories.split(",") if s}
    unknown = [a for a in args.agents if a not in REGISTRY]
    if unknown:
        parser.error(f"unknown operations: {', '.join(unknown)}")
    return args


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    outcomes = asyncio.run(run(args))
    print()
    print_table(outcomes)
    print_criteria()
    if args.show:
        print_failures(outcomes)
    print(f"\n{len(outcomes)} calls in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
