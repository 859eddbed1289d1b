"""Load and soak against a real server on loopback with the embedded model.

Load: ``--clients`` concurrent users (each with its own API key, so per-user limits apply to
each), half streaming chapters over SSE and half asking for JSON chapters, each making
``--requests`` requests. The queue is kept small (``QUEUE_MAX_WAITING``) so that overload is
exercised: a 503 (queue full or timed out) or 429 (per-user limit) is a *planned* refusal;
anything else that is not a 2xx, a broken stream, or a transport error is *unexpected*.

Soak: ``--soak N`` short generations in a row, printing the server's resident memory (RSS,
from /proc) before, along the way and after (goal: growth under 50 MB, no upward trend).

Faults (``--faults``): the load again, on a server whose archive lives on a ``chroma run`` this
benchmark starts, while (from ``--pause-after-s``) the Chroma server is paused (SIGSTOP) for
``--pause-s`` seconds, one more client reads a long stream at 1 byte per second, one leaves a
stream after its first token, and one sends a 16 MiB body. Every other request should still
be served (agents answer without archive passages while Chroma hangs, after
``CHROMA_TIMEOUT_S``); ``/ready`` should say 503 during the pause and 200 again after it; and
the model should be free once the load is done.

Only 127.0.0.1 is contacted; every loop is bounded in count and time.

    cd backend && python -m bench.bench_load [--clients 8] [--requests 4] [--soak 500]
    cd backend && python -m bench.bench_load --faults [--pause-s 20] [--slow-read-s 40]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def start_server(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    # This checkout's CLI (the console script may belong to another checkout's install).
    command = [sys.executable, "-c", "from app.cli import app; app()", "serve",
               "--port", str(port)]
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


def percentile(values: list[float], q: int) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 \
        else values[0]


async def stream_one(client: httpx.AsyncClient, body: dict[str, Any], tally: Tally) -> None:
    start = time.perf_counter()
    first = None
    events: list[tuple[str, dict[str, Any]]] = []
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


async def json_one(client: httpx.AsyncClient, body: dict[str, Any], tally: Tally) -> None:
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


async def load(base: str, keys: list[str], requests: int, max_tokens: int) -> Tally:
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
    return tally


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


# --- faults -------------------------------------------------------------------------------
def big_body(size_bytes: int) -> bytes:
    """A generate-chapter JSON body of exactly ``size_bytes`` bytes: the seed story plus one
    chapter padded with ASCII letters (so the body passes a ``MAX_REQUEST_BYTES`` of that size
    and is then parsed and refused as too long a chapter: 422).

    Raises:
        ValueError: ``size_bytes`` is below the unpadded body's size.
    """
    chapter = {"number": 1, "title": "Padding", "content": ""}
    story: dict[str, Any] = {**SEED["structured_context"], "chapters": [chapter]}
    body = {"structured_context": story, "max_tokens": 8}
    empty = len(json.dumps(body).encode())
    if size_bytes < empty:
        raise ValueError(f"a body of {size_bytes} bytes is below the {empty} bytes it needs")
    chapter["content"] = "a" * (size_bytes - empty)
    data = json.dumps(body).encode()
    assert len(data) == size_bytes
    return data


def http_request(method: str, path: str, host: str, headers: dict[str, str],
                 body: bytes) -> bytes:
    """An HTTP/1.1 request as bytes (``Content-Length``, ``Connection: close``)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}",
             "Connection: close", *(f"{name}: {value}" for name, value in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class SlowRead:
    """What a slow reader got: bytes read, the first of them, and whether the server closed
    the connection before the reader gave up."""

    received: int
    head: bytes
    closed_by_server: bool
    seconds: float


def slow_read(host: str, port: int, request: bytes, seconds: float, *,
              interval_s: float = 1.0, receive_buffer: int = 4096) -> SlowRead:
    """Send ``request``, then read its answer one byte every ``interval_s`` seconds for at
    most ``seconds`` seconds (blocking: run it on a thread). The socket's receive buffer is
    ``receive_buffer`` bytes (the kernel may double it), so the server's writes back up soon
    and it sees a client that does not read."""
    started = time.monotonic()
    received = bytearray()
    closed = False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.settimeout(max(interval_s, 1.0) * 10)
        sock.connect((host, port))
        sock.sendall(request)
        while time.monotonic() - started < seconds:
            try:
                byte = sock.recv(1)
            except TimeoutError:
                continue
            if not byte:
                closed = True
                break
            received += byte
            time.sleep(interval_s)
    return SlowRead(len(received), bytes(received[:16]), closed, time.monotonic() - started)


async def leave_after_first_token(base: str, key: str, body: dict[str, Any]) -> str:
    """Stream a chapter and close the connection at the first ``token`` event; says what
    happened."""
    start = time.perf_counter()
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=600) as client, \
            client.stream("POST", "/api/v1/generate-chapter/stream", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            return f"answered {response.status_code} before streaming"
        async for line in response.aiter_lines():
            if line.startswith("event:") and line[6:].strip() == "token":
                return f"left at the first token, {time.perf_counter() - start:.1f} s in"
    return "the stream ended without a token"


async def send_big_body(base: str, key: str, size_bytes: int) -> str:
    """POST a ``size_bytes`` generate-chapter body (:func:`big_body`); says how it was
    answered and how fast."""
    data = big_body(size_bytes)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=600) as client:
        response = await client.post("/api/v1/generate-chapter", content=data)
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = "-"
    return f"{response.status_code} {code} in {time.perf_counter() - start:.2f} s"


async def pause(process: subprocess.Popen[bytes], after_s: float, seconds: float,
                marks: dict[str, float]) -> None:
    """SIGSTOP ``process`` after ``after_s`` seconds and SIGCONT it ``seconds`` later (also
    when cancelled); ``marks`` gets the ``paused`` and ``resumed`` times (perf_counter)."""
    await asyncio.sleep(after_s)
    os.kill(process.pid, signal.SIGSTOP)
    marks["paused"] = time.perf_counter()
    try:
        await asyncio.sleep(seconds)
    finally:
        os.kill(process.pid, signal.SIGCONT)
        marks["resumed"] = time.perf_counter()


async def watch_ready(base: str, done: asyncio.Event, samples: list[tuple[float, int]]) -> None:
    """GET ``/ready`` every half second until ``done``; ``samples`` gets (time, status) with
    status 0 for no answer within 10 s."""
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        while not done.is_set():
            try:
                status = (await client.get("/ready")).status_code
            except httpx.HTTPError:
                status = 0
            samples.append((time.perf_counter(), status))
            await asyncio.sleep(0.5)


async def model_free(base: str, key: str, within_s: float) -> float | None:
    """Seconds until ``/metrics`` shows no request holding or waiting for the model, or
    ``None`` when that does not happen within ``within_s``."""
    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=base, timeout=10,
                                 headers={"Authorization": f"Bearer {key}"}) as client:
        while time.perf_counter() - start < within_s:
            text = (await client.get("/metrics")).text
            busy = [line for line in text.splitlines()
                    if line.startswith(("writer_assistant_requests_running ",
                                        "writer_assistant_requests_waiting "))
                    and float(line.split()[-1]) != 0]
            if not busy:
                return time.perf_counter() - start
            await asyncio.sleep(0.5)
    return None


async def faults(base: str, keys: list[str], args: argparse.Namespace,
                 chroma: subprocess.Popen[bytes]) -> None:
    """The load on ``keys[3:]`` while Chroma is paused and ``keys[:3]`` are a slow reader, a
    client that leaves after its first token and a 16 MiB body; prints what each saw."""
    slow_key, leaving_key, big_key, *load_keys = keys
    host, port = base.removeprefix("http://").split(":")
    slow_body = json.dumps({**SEED, "max_tokens": args.slow_tokens}).encode()
    slow_request = http_request(
        "POST", "/api/v1/generate-chapter/stream", host,
        {"Authorization": f"Bearer {slow_key}", "Content-Type": "application/json"}, slow_body)
    marks: dict[str, float] = {}
    samples: list[tuple[float, int]] = []
    done = asyncio.Event()
    start = time.perf_counter()
    pausing = asyncio.create_task(pause(chroma, args.pause_after_s, args.pause_s, marks))
    watching = asyncio.create_task(watch_ready(base, done, samples))
    try:
        tally, slow, leaving, big = await asyncio.gather(
            load(base, load_keys, args.requests, args.max_tokens),
            asyncio.to_thread(slow_read, host, int(port), slow_request, args.slow_read_s),
            leave_after_first_token(base, leaving_key, {**SEED, "max_tokens": 200}),
            send_big_body(base, big_key, args.big_body_mib * 1024 * 1024),
        )
        await pausing
    finally:
        pausing.cancel()
        done.set()
        await watching
    free_s = await model_free(base, load_keys[0], 60)
    total = len(load_keys) * args.requests
    paused, resumed = marks["paused"], marks["resumed"]
    during = [status for t, status in samples if paused <= t < resumed]
    back = next((t - resumed for t, status in samples if t >= resumed and status == 200), None)
    print(f"faults: Chroma paused {resumed - paused:.1f} s, from {paused - start:.1f} s into "
          f"the run (CHROMA_TIMEOUT_S {args.chroma_timeout_s:g})")
    print(f"  load served          {tally.ok} of {total} requests "
          f"({sum(tally.planned.values())} refused as planned, {len(tally.unexpected)} "
          "unexpected)")
    print(f"  /ready during pause  {during.count(503)} of {len(during)} answers 503 "
          f"({len(during) - during.count(503) - during.count(0)} other, "
          f"{during.count(0)} no answer); 200 again "
          + (f"{back:.1f} s after SIGCONT" if back is not None else "never"))
    print(f"  slow reader          {slow.received} bytes in {slow.seconds:.0f} s "
          f"({slow.head!r}...), closed by the server: {'yes' if slow.closed_by_server else 'no'}")
    print(f"  early disconnect     {leaving}")
    print(f"  {args.big_body_mib} MiB body          {big}")
    print("  model free after     " + (f"{free_s:.1f} s" if free_s is not None
                                       else "no: still busy 60 s after the load"))


def start_chroma(path: Path) -> tuple[subprocess.Popen[bytes], int]:
    """``chroma run`` on a free loopback port with its data in ``path``, once it answers its
    heartbeat."""
    port = free_port()
    chroma = shutil.which("chroma") or str(Path(sys.executable).parent / "chroma")
    process = subprocess.Popen([chroma, "run", "--path", str(path), "--host", "127.0.0.1",
                                "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=2).is_success:
                return process, port
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.2)
    process.kill()
    raise SystemExit("chroma run did not answer its heartbeat")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (see the module's docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--queue", type=int, default=3, help="QUEUE_MAX_WAITING for the run "
                        "(with --faults: at least the clients, so none is refused)")
    parser.add_argument("--soak", type=int, default=0, help="short generations in a row")
    faults_group = parser.add_argument_group("faults")
    faults_group.add_argument("--faults", action="store_true",
                              help="run the load with Chroma paused and misbehaving clients")
    faults_group.add_argument("--pause-after-s", type=float, default=5.0,
                              help="seconds into the load before Chroma is paused")
    faults_group.add_argument("--pause-s", type=float, default=20.0,
                              help="seconds Chroma stays paused")
    faults_group.add_argument("--chroma-timeout-s", type=float, default=2.0,
                              help="CHROMA_TIMEOUT_S of the server")
    faults_group.add_argument("--slow-read-s", type=float, default=40.0,
                              help="seconds the slow client reads, 1 byte per second")
    faults_group.add_argument("--slow-tokens", type=int, default=600,
                              help="max_tokens of the slow client's stream")
    faults_group.add_argument("--send-timeout-s", type=float, default=5.0,
                              help="SSE_SEND_TIMEOUT_S of the server")
    faults_group.add_argument("--big-body-mib", type=int, default=16,
                              help="size of the big body in MiB (MAX_REQUEST_BYTES is set to it)")
    args = parser.parse_args(argv)
    if args.faults and args.clients < 1:
        parser.error("--faults needs at least one load client")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    users = max(args.clients, 1) + (3 if args.faults else 0)
    keys = [f"user{i}-key-{os.urandom(8).hex()}" for i in range(users)]
    with tempfile.TemporaryDirectory() as state:
        env = {"API_KEYS": ",".join(f"user{i}:{key}" for i, key in enumerate(keys)),
               "QUEUE_MAX_WAITING": str(args.queue), "QUEUE_MAX_WAIT_S": "60",
               "RATE_LIMIT_PER_MINUTE": "600", "ARCHIVE_ENABLED": "false",
               "SUMMARY_CACHE_DIR": str(Path(state) / "summaries"), "LOG_LEVEL": "WARNING"}
        chroma: subprocess.Popen[bytes] | None = None
        if args.faults:
            chroma, chroma_port = start_chroma(Path(state) / "chroma")
            env |= {"ARCHIVE_ENABLED": "true", "CHROMA_HOST": "127.0.0.1",
                    "CHROMA_PORT": str(chroma_port),
                    "CHROMA_TIMEOUT_S": str(args.chroma_timeout_s),
                    "QUEUE_MAX_WAITING": str(max(args.queue, users)),
                    "SSE_SEND_TIMEOUT_S": str(args.send_timeout_s),
                    "MAX_REQUEST_BYTES": str(args.big_body_mib * 1024 * 1024)}
        try:
            process, base = start_server(env)
            try:
                if args.faults and chroma is not None:
                    asyncio.run(faults(base, keys, args, chroma))
                elif args.clients:
                    asyncio.run(load(base, keys, args.requests, args.max_tokens))
                if args.soak:
                    asyncio.run(soak(base, keys[0], args.soak, process.pid))
            finally:
                process.terminate()
                process.wait(timeout=60)
        finally:
            if chroma is not None:
                os.kill(chroma.pid, signal.SIGCONT)  # a stopped process ignores SIGTERM
                chroma.terminate()
                chroma.wait(timeout=30)


if __name__ == "__main__":
    main()
