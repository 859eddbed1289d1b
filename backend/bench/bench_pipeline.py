"""Pipeline benchmark: the chapter pipeline against the same agent calls made one by one over
HTTP, on the real embedded model, in one run on one server.

The story is Alice chapter 1 (``examples/alice_context.py``, about 4,000 prompt tokens); the
chapter to write is chapter 2. Both sides make the same six calls with the same sampling
(temperature 0, seed 1, ``--max-tokens`` for the writer, the agents' defaults otherwise):

- **pipeline**: ``POST /api/v1/chapter-pipeline`` with ``max_rounds`` 2 and ``min_score``
  null (so both rounds run): draft, editor review, rater, revision, editor review, rater;
- **one by one**: the calls an author's client makes without the pipeline, each a separate
  request carrying the draft as text: generate-chapter; editor-review with
  ``chapter_to_review``; rater-feedback with ``plot_point``; modify-chapter with
  ``current_chapter`` and the same revision request the pipeline writes
  (:func:`app.agents.pipeline.revision_request`, all suggestions); then editor and rater on
  the revision.

Order: a warm-up (``/api/v1/context/warm`` for the writer, so neither side pays the story's
cold prompt), then ``--pairs`` pairs of (one by one, pipeline), alternating which goes first.
Printed per side and pair: wall time (client), completion tokens, prompt tokens processed
(prompt minus cached) and the share of time spent processing prompts (the calls' time to
first token over the wall time); then the ratio pipeline / one by one of the wall times and
the goals (issue 13): wall-time ratio <= 0.9, prompt share of the pipeline <= 15%.

The two sides' drafts differ after the first call (the pipeline's agents read the draft in
the story block, the one-by-one agents in their task), so their completion tokens differ too:
both are printed, and the ratio of wall time per completion token beside the plain one.

    cd backend && ../.venv/bin/python -m bench.bench_pipeline [--pairs 2] [--max-tokens 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

BACKEND = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BACKEND / "examples"))

from alice_context import build_request  # noqa: E402 - after the path insert

from app.agents.pipeline import revision_request  # noqa: E402
from app.schemas.context import Priority  # noqa: E402
from app.schemas.pipeline import PipelineSuggestion  # noqa: E402
from bench.bench_agents import running_server  # noqa: E402

#: One rater, as the pipeline's default.
RATER = {"name": "reader", "criteria": ["engagement", "clarity", "consistency with the story"]}


@dataclass
class Side:
    """One side's run: wall time (s), and per call the server's figures."""

    name: str
    wall_s: float = 0.0
    calls: list[dict[str, Any]] = field(default_factory=list)

    def add(self, usage: dict[str, Any], timings: dict[str, Any], label: str) -> None:
        self.calls.append({"label": label, "usage": usage, "timings": timings})

    @property
    def completion_tokens(self) -> int:
        return sum(c["usage"]["completion_tokens"] for c in self.calls)

    @property
    def processed_tokens(self) -> int:
        return sum(c["usage"]["prompt_tokens"]
                   - c["usage"].get("prompt_tokens_details", {}).get("cached_tokens", 0)
                   for c in self.calls)

    @property
    def prompt_s(self) -> float:
        return sum(c["timings"]["time_to_first_token_ms"] for c in self.calls) / 1000

    @property
    def prompt_share(self) -> float:
        return self.prompt_s / self.wall_s if self.wall_s else float("nan")


def post(http: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = http.post(path, json=body)
    if response.status_code != 200:
        raise SystemExit(f"{path} answered {response.status_code}: {response.text[:500]}")
    return response.json()


def one_by_one(http: httpx.Client, story: dict[str, Any], max_tokens: int) -> Side:
    """The six calls as separate requests, the draft carried as text."""
    side = Side("one by one")
    context = story["structured_context"]
    common = {"structured_context": context, "temperature": 0, "seed": 1}
    started = time.perf_counter()
    answer = post(http, "/api/v1/generate-chapter", {**story, "temperature": 0, "seed": 1,
                                                       "max_tokens": max_tokens})
    side.add(answer["usage"], answer["timings"], "draft")
    draft = answer["chapter_text"]
    for round_ in (1, 2):
        review = post(http, "/api/v1/editor-review", {**common, "chapter_to_review": draft})
        side.add(review["usage"], review["timings"], f"review {round_}")
        rated = post(http, "/api/v1/rater-feedback", {
            **common, "plot_point": draft, "rater_name": RATER["name"],
            "criteria": RATER["criteria"]})
        side.add(rated["usage"], rated["timings"], f"rate {round_}")
        if round_ == 2:
            break
        suggestions = [PipelineSuggestion(source="editor", issue=s["issue"],
                                          suggestion=s["suggestion"],
                                          priority=Priority(s["priority"]),
                                          applied=True) for s in review["suggestions"]]
        suggestions += [PipelineSuggestion(source="rater", suggestion=line,
                                           priority=Priority.medium,
                                           applied=True) for line in rated["suggestions"]]
        revised = post(http, "/api/v1/modify-chapter", {
            **common, "max_tokens": max_tokens, "current_chapter": draft,
            "user_request": revision_request(suggestions)})
        side.add(revised["usage"], revised["timings"], "revise")
        draft = revised["modified_chapter"]
    side.wall_s = time.perf_counter() - started
    return side


def pipeline(http: httpx.Client, story: dict[str, Any], max_tokens: int) -> Side:
    """The same calls as one pipeline request."""
    side = Side("pipeline")
    started = time.perf_counter()
    record = post(http, "/api/v1/chapter-pipeline", {
        **story, "temperature": 0, "seed": 1, "max_tokens": max_tokens, "max_rounds": 2,
        "min_score": None, "raters": [RATER]})
    side.wall_s = time.perf_counter() - started
    for call in record["calls"]:
        side.add(call["usage"], call["timings"], f"{call['phase']} {call['round']}")
    if record["stopped_because"] == "error":
        print(f"  pipeline stopped early: {record['error']}")
    return side


def print_side(side: Side) -> None:
    print(f"  {side.name:<11} wall {side.wall_s:7.1f} s   completion {side.completion_tokens:5d}"
          f"   prompt processed {side.processed_tokens:6d} tok   prompt time "
          f"{side.prompt_s:6.1f} s ({side.prompt_share:.0%})")
    for call in side.calls:
        usage, timings = call["usage"], call["timings"]
        cached = usage.get("prompt_tokens_details", {}).get("cached_tokens", 0)
        print(f"      {call['label']:<10} prompt {usage['prompt_tokens']:5d} (cached {cached:5d})"
              f"  completion {usage['completion_tokens']:4d}  ttft "
              f"{timings['time_to_first_token_ms'] / 1000:6.2f} s  total "
              f"{timings['total_ms'] / 1000:6.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2, help="pairs of (one by one, pipeline)")
    parser.add_argument("--max-tokens", type=int, default=200,
                        help="completion tokens of the writer's drafts")
    args = parser.parse_args()
    story = build_request(chapters=1)
    ratios, per_token, shares = [], [], []
    with running_server({"PREFIX_CACHE_ENABLED": "true"}, None) as (_process, base), \
            httpx.Client(base_url=base, timeout=1800) as http:
        started = time.perf_counter()
        post(http, "/api/v1/context/warm", {"operation": "generate-chapter", "request": story})
        print(f"warm-up (the story's prompt, cold): {time.perf_counter() - started:.1f} s")
        for pair in range(args.pairs):
            order = (one_by_one, pipeline) if pair % 2 == 0 else (pipeline, one_by_one)
            sides = {}
            for run in order:
                side = run(http, story, args.max_tokens)
                sides[side.name] = side
            print(f"pair {pair + 1} ({order[0].__name__.replace('_', ' ')} first)")
            for side in sides.values():
                print_side(side)
            alone, team = sides["one by one"], sides["pipeline"]
            ratios.append(team.wall_s / alone.wall_s)
            per_token.append((team.wall_s / max(team.completion_tokens, 1))
                             / (alone.wall_s / max(alone.completion_tokens, 1)))
            shares.append(team.prompt_share)
            print(f"  pipeline / one by one: wall {ratios[-1]:.2f}x, per completion token "
                  f"{per_token[-1]:.2f}x")
    ratio, share = statistics.median(ratios), statistics.median(shares)
    print("\nGoals (issue 13), medians over the pairs:")
    print(f"  wall time, pipeline / one by one: {ratio:.2f}x (goal <= 0.9) "
          f"{'PASS' if ratio <= 0.9 else 'FAIL'}; per completion token "
          f"{statistics.median(per_token):.2f}x")
    print(f"  pipeline time processing prompts: {share:.0%} (goal <= 15%) "
          f"{'PASS' if share <= 0.15 else 'FAIL'}")


if __name__ == "__main__":
    main()
