"""Load and soak against a real server on loopback with the embedded model.

Load: ``--clients`` concurrent users (each with its own API key, so per-user limits apply to
each), half streaming chapters over SSE and half asking for JSON chapters, each making
``--requests`` requests. The queue is kept small (``QUEUE_MAX_WAITING``) so that overload is
exercised: a 503 (queue full or timed out) or 429 (per-user limit) is a *planned* refusal;
anything else that is not a 2xx, a broken stream, or a transport error is *unexpected*.

Soak: ``--soak N`` short generations in a row, printing the server's resident memory (RSS,
from /proc) before, along the way and after (goal: growth under 50 MB, no upward trend).

Only 127.0.0.1 is contacted; every loop is bounded in count and time.

    cd backend && python -m bench.bench_load [--clients 8] [--requests 4] [--soak 500]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

BACKEND = Path(__file__).resolve().parents[1]
SEED = {"structured_context": {
    "plot_elements": [{"type": "scene", "content": "Hero enters forest", "priority": "high"}],
    "character_contexts": [{"character_id": "hero", "character_name": "Aria",
                            "current_state": "determined"}],
    "user_requests": [{"type": "instruction", "content": "Add sensory details",
                       "priority": "high"}]}}
#: Wall-clock bound of the whole load phase, in seconds.
LOAD_DEADLINE_S = 900


@dataclass
class Tally:
    ok: int = 0
    planned: dict[str, int] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)
    ttft_s: list[float] = field(default_factory=list)
    queue_s: list[float] = field(default_factory=list)
    completion_tokens: int = 0
    refusal_s: list[float] = field(default_factory=list)

    def refuse(self, code: str) -> None:
        self.planned[code] = self.planned.get(code, 0) + 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [str(Path(sys.executable).parent / "writer-assistant"), "serve", "--port", str(port)]
    process = subprocess.Popen(command, cwd=BACKEND, env={**os.environ, **env},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                return process, base
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit("server did not become ready")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 \
        else values[0]


async def stream_one(client: httpx.AsyncClient, body: dict, tally: Tally) -> None:
    start = time.perf_counter()
    first = None
    events: list[tuple[str, dict]] = []
    async with client.stream("POST", "/api/v1/generate-chapter/stream", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            record_refusal(response, tally, time.perf_counter() - start)
            return
        event = None
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:") and event:
                if event == "token" and first is None:
                    first = time.perf_counter() - start
                events.append((event, json.loads(line[5:])))
    terminal = [(name, data) for name, data in events if name in ("done", "error")]
    if len(terminal) != 1:
        tally.unexpected.append(f"stream with {len(terminal)} terminal events")
    elif terminal[0][0] == "error":
        code = terminal[0][1].get("code", "")
        if code in ("queue_timeout", "service_draining"):
            tally.refuse(code)
        else:
            tally.unexpected.append(f"stream error {code}")
    else:
        done = terminal[0][1]
        tally.ok += 1
        tally.ttft_s.append(first if first is not None else float("nan"))
        tally.queue_s.append(done["timings"]["queue_ms"] / 1000)
        tally.completion_tokens += done["usage"]["completion_tokens"]


def record_refusal(response: httpx.Response, tally: Tally, elapsed_s: float) -> None:
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError):
        code = "unparseable"
    if response.status_code in (429, 503) and "retry-after" in response.headers:
        tally.refuse(f"{response.status_code} {code}")
        if code != "queue_timeout":  # those waited on purpose
            tally.refusal_s.append(elapsed_s)
    else:
        tally.unexpected.append(f"{response.status_code} {code}")


async def json_one(client: httpx.AsyncClient, body: dict, tally: Tally) -> None:
    start = time.perf_counter()
    response = await client.post("/api/v1/generate-chapter", json=body)
    if response.status_code != 200:
        record_refusal(response, tally, time.perf_counter() - start)
        return
    data = response.json()
    tally.ok += 1
    tally.ttft_s.append(data["timings"]["time_to_first_token_ms"] / 1000 + data["timings"]
                        ["queue_ms"] / 1000)
    tally.queue_s.append(data["timings"]["queue_ms"] / 1000)
    tally.completion_tokens += data["usage"]["completion_tokens"]


async def user(base: str, key: str, streaming: bool, requests: int, max_tokens: int,
               tally: Tally) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=600) as client:
        for i in range(requests):
            body = {**SEED, "max_tokens": max_tokens, "seed": i}
            try:
                await (stream_one if streaming else json_one)(client, body, tally)
            except httpx.HTTPError as error:
                tally.unexpected.append(f"transport {type(error).__name__}")


async def load(base: str, keys: list[str], requests: int, max_tokens: int) -> None:
    tally = Tally()
    start = time.perf_counter()
    users = [user(base, key, index % 2 == 0, requests, max_tokens, tally)
             for index, key in enumerate(keys)]
    await asyncio.wait_for(asyncio.gather(*users), timeout=LOAD_DEADLINE_S)
    elapsed = time.perf_counter() - start
    print(f"load: {len(keys)} users ({len(keys) - len(keys) // 2} SSE, {len(keys) // 2} JSON) x "
          f"{requests} requests, max_tokens {max_tokens}, {elapsed:.1f} s")
    print(f"  completed {tally.ok}  throughput {tally.ok / elapsed:.2f} req/s, "
          f"{tally.completion_tokens / elapsed:.1f} completion tokens/s")
    ttft = [t for t in tally.ttft_s if t == t]
    print(f"  time to first token  p50 {percentile(ttft, 50):.2f} s  p95 "
          f"{percentile(ttft, 95):.2f} s")
    print(f"  queue time           p50 {percentile(tally.queue_s, 50):.2f} s  p95 "
          f"{percentile(tally.queue_s, 95):.2f} s")
    print(f"  planned refusals     {sum(tally.planned.values())} {tally.planned}")
    print(f"  refusal latency      p50 {percentile(tally.refusal_s, 50) * 1000:.0f} ms  p95 "
          f"{percentile(tally.refusal_s, 95) * 1000:.0f} ms (goal < 100 ms)")
    print(f"  unexpected errors    {len(tally.unexpected)} {tally.unexpected[:10]}")


async def soak(base: str, key: str, count: int, pid: int) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    samples = [(0, rss_mb(pid))]
    failures = 0
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=120) as client:
        for i in range(1, count + 1):
            body = {**SEED, "max_tokens": 8, "seed": i}
            if i % 2:
                response = await client.post("/api/v1/generate-chapter", json=body)
                failures += response.status_code != 200
            else:
                response = await client.post("/api/v1/generate-chapter/stream", json=body)
                failures += response.status_code != 200 or "event: done" not in response.text
            if i % max(1, count // 10) == 0:
                samples.append((i, rss_mb(pid)))
    first, last = samples[0][1], samples[-1][1]
    # Trend over the second half (after warm-up): least-squares slope in MB per 100 requests.
    tail = samples[len(samples) // 2:]
    xs, ys = [s[0] for s in tail], [s[1] for s in tail]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / max(
        sum((x - mean_x) ** 2 for x in xs), 1e-9)
    print(f"soak: {count} short generations, {failures} failed")
    print("  RSS MB: " + ", ".join(f"{n}:{mb:.0f}" for n, mb in samples))
    print(f"  growth {last - first:+.1f} MB (goal < 50), second-half trend "
          f"{slope * 100:+.2f} MB per 100 requests")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--queue", type=int, default=3, help="QUEUE_MAX_WAITING for the run")
    parser.add_argument("--soak", type=int, default=0, help="short generations in a row")
    args = parser.parse_args()
    keys = [f"user{i}-key-{os.urandom(8).hex()}" for i in range(max(args.clients, 1))]
    with tempfile.TemporaryDirectory() as state:
        env = {"API_KEYS": ",".join(f"user{i}:{key}" for i, key in enumerate(keys)),
               "QUEUE_MAX_WAITING": str(args.queue), "QUEUE_MAX_WAIT_S": "60",
               "RATE_LIMIT_PER_MINUTE": "600", "ARCHIVE_ENABLED": "false",
               "SUMMARY_CACHE_DIR": str(Path(state) / "summaries"), "LOG_LEVEL": "WARNING"}
        process, base = start_server(env)
        try:
            if args.clients:
                asyncio.run(load(base, keys, args.requests, args.max_tokens))
            if args.soak:
                asyncio.run(soak(base, keys[0], args.soak, process.pid))
        finally:
            process.terminate()
            process.wait(timeout=60)


if __name__ == "__main__":
    main()
