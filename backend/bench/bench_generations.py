"""Generation records benchmark: the response cache against generating, and what keeping a
record costs, on the real embedded model in one run on one server.

An author's sequence on two stories, interleaved (story A: Alice chapter 1, about 4,000 prompt
tokens, writing chapter 2; story B: the short forest scene of the README), each request
``generate-chapter`` with ``--max-tokens`` (64) completion tokens, temperature 0.8 and a seed:

1. A, then B: cold (the first time each prompt is seen): generated, stored (``cache: miss``);
2. A, then B again, the same requests: answered from the cache (``hit``), ``--hits`` times
   each;
3. A, then B with ``"cache": false`` (the author asks for a fresh generation of the same
   request): generated again with the story's KV state warm (``off``).

Printed: each request's client wall time (ms), the server's total and the cache outcome; then
per story the ratios hit / cold and hit / regenerated (median of the hits).

The store's write overhead is measured on the records this run made: each is written
``--writes`` times to a fresh store (with its cache entry, as the runner writes it) and the
median write is set beside the median total time of the regenerated 64-token generations
(goal, issue 14: under 2%). The cached lookup is timed the same way.

    cd backend && ../.venv/bin/python -m bench.bench_generations [--max-tokens 64] [--hits 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

BACKEND = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BACKEND / "examples"))

from alice_context import build_request  # noqa: E402 - after the path insert

from app.generations.records import GenerationRecord  # noqa: E402
from app.generations.store import SqliteGenerationStore  # noqa: E402
from bench.bench_agents import running_server  # noqa: E402

#: The README's short scene (story B).
FOREST = {"structured_context": {
    "plot_elements": [{"type": "scene", "content": "Hero enters forest", "priority": "high"}],
    "character_contexts": [{"character_id": "hero", "character_name": "Aria",
                            "current_state": "determined"}],
    "user_requests": [{"type": "instruction", "content": "Add sensory details",
                       "priority": "high"}]}}


def _post(http: httpx.Client, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    answer = http.post("/api/v1/generate-chapter", json=body)
    wall_ms = (time.perf_counter() - started) * 1000
    answer.raise_for_status()
    return wall_ms, answer.json()


def _line(label: str, wall_ms: float, body: dict[str, Any]) -> None:
    print(f"{label:<26} {wall_ms:>10.1f} ms client  {body['timings']['total_ms']:>10.1f} ms "
          f"server  cache {body['cache']:<4}  {body['usage']['completion_tokens']:>3} "
          f"completion tokens  {body['generation_id']}")


def _median_ms(work: Any, times: int) -> float:
    samples = []
    for _ in range(times):
        started = time.perf_counter()
        work()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--hits", type=int, default=5)
    parser.add_argument("--writes", type=int, default=50)
    args = parser.parse_args()
    sampling = {"max_tokens": args.max_tokens, "temperature": 0.8, "seed": 42}
    stories = {"A (Alice ch. 1)": {**build_request(chapters=1), **sampling},
               "B (forest scene)": {**FOREST, **sampling}}
    cold: dict[str, float] = {}
    hits: dict[str, list[float]] = {name: [] for name in stories}
    regenerated: dict[str, tuple[float, dict[str, Any]]] = {}
    records: list[dict[str, Any]] = []
    with running_server({}, None) as (_process, base), \
            httpx.Client(base_url=base, timeout=600) as http:
        for name, body in stories.items():
            wall, answer = _post(http, body)
            assert answer["cache"] == "miss", answer["cache"]
            cold[name] = wall
            _line(f"{name} cold", wall, answer)
            records.append(http.get(f"/api/v1/generations/{answer['generation_id']}").json())
        for _ in range(args.hits):
            for name, body in stories.items():
                wall, answer = _post(http, body)
                assert answer["cache"] == "hit", answer["cache"]
                hits[name].append(wall)
        for name in stories:
            print(f"{name + ' hit':<26} {statistics.median(hits[name]):>10.1f} ms client "
                  f"(median of {args.hits})")
        for name, body in stories.items():
            wall, answer = _post(http, {**body, "cache": False})
            regenerated[name] = (wall, answer)
            _line(f"{name} regenerated", wall, answer)
            records.append(http.get(f"/api/v1/generations/{answer['generation_id']}").json())

    print("\nstory                      hit / cold    hit / regenerated")
    for name in stories:
        hit = statistics.median(hits[name])
        print(f"{name:<26} {hit / cold[name]:>10.4f}    {hit / regenerated[name][0]:>10.4f}")

    with tempfile.TemporaryDirectory(prefix="bench-generations-") as tmp:
        store = SqliteGenerationStore.open(Path(tmp) / "g.sqlite3")
        kept = [GenerationRecord.model_validate({**r, "tenant": "local"}) for r in records]
        counter = iter(range(10**9))

        def write() -> None:
            n = next(counter)
            for record in kept:
                store.put(record.model_copy(update={"id": f"{record.id}-{n}"}),
                          cache_key=f"{record.id}-{n}", cache_max_bytes=64 * 2**20)

        write_ms = _median_ms(write, args.writes) / len(kept)
        lookup_ms = _median_ms(lambda: store.cached("local", f"{kept[0].id}-0"), args.writes)
        store.close()
    sizes = [len(GenerationRecord.model_validate({**r, "tenant": "local"}).model_dump_json())
             for r in records]
    generation_ms = statistics.median(a["timings"]["total_ms"] for _, a in regenerated.values())
    print(f"\nrecord size: {min(sizes)}-{max(sizes)} bytes (the assembly report is most of it)")
    print(f"store write per generation: {write_ms:.2f} ms (median of {args.writes}); a "
          f"{args.max_tokens}-token generation: {generation_ms:.0f} ms (median, regenerated); "
          f"overhead {100 * write_ms / generation_ms:.4f}% (goal < 2%)")
    print(f"cache lookup in the store: {lookup_ms:.2f} ms (median of {args.writes})")


if __name__ == "__main__":
    main()
