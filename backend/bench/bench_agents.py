"""Agents benchmark: what an author does, on the real embedded model over HTTP, side by side.

One run starts one fresh server (uvicorn, ``app.main:create_app --factory``) per configuration,
one after another, each with its own temporary data directories, the archive off and no rate
limits:

- ``cache on``: the prefix KV state cache on (``PREFIX_CACHE_ENABLED=true``, the default);
- ``cache off``: ``PREFIX_CACHE_ENABLED=false``;
- ``cache on, q8_0 KV``: the cache on with ``LLM_KV_CACHE_TYPE=q8_0`` (half the snapshot
  bytes; prompt processing is slower on these CPUs).

``PREFIX_CACHE_RAM_BYTES`` is passed when ``--ram-bytes`` is given; the disk tier
(``PREFIX_CACHE_DIR``) is left unset so that a fresh server is cold.

Workloads, in this order on each server (JSON POSTs, temperature 0, seed 1; the writer gets
``--max-tokens``, 64 by default, and the JSON agents ``--json-max-tokens``, 300 by default,
because with 64 the character agent's answer never fits and the editor needs its repair
attempt, and with 200 the character agent still fails with 422 ``max_tokens_too_small``):

a. The realistic sequence on Alice chapters 1-2 (``examples/alice_context.py``, about 6,000
   prompt tokens): generate-chapter (chapter 3), editor-review of chapter 2 by number,
   character-feedback (Alice), rater-feedback. First cold (the server has just started), then
   the same four calls again (warm).
b. Two stories interleaved, Alice (chapters 1-2) and Holmes ("A Scandal in Bohemia" part I,
   ``examples/holmes_context.py``, about 5,700 prompt tokens): Alice writer, Holmes writer,
   Alice editor, Holmes editor, Alice character, Holmes character. Every call after a story's
   first in the interleave is a *story switch*: the call before it was on the other story.
c. Decode speed: the Holmes generate-chapter prompt (``/api/v1/context/preview``) streamed from
   ``/api/v1/generate-chapter/stream`` (decode tokens/s between the first and the last
   ``token`` event, at the client) against raw llama-cpp-python loaded in this process on the
   same prompt tokens with the same settings and KV cache type, interleaved (raw, server, raw,
   server...). The raw model is loaded only once the server is idle and freed before the next
   server starts (the machine has 2 cores). The server's KV cache already holds the Holmes
   story after (b), so only the raw side processes the prompt.

Per call it records the server's ``timings`` (time to first token, total), ``usage``
(prompt tokens, ``prompt_tokens_details.cached_tokens``: missing counts as 0),
``context_metadata.shared_prefix_tokens`` (may be missing), the attempts and the client's wall
time. A JSON agent may answer 502 ``agent_output_invalid`` or 422 ``max_tokens_too_small`` on
this small model: the call is recorded with its error code (an error body has no timings) and
the run goes on. After a repair attempt (``attempts`` 2) the timings and usage are the
second attempt's; the client's wall time covers both. Around each workload it scrapes
``GET /metrics`` for the ``writer_assistant_prefix_cache*`` series (printed after each workload,
with snapshot save and restore seconds and bytes per 1,000 tokens derived from the counters)
and reads the server's resident memory (``VmRSS``, and the peak ``VmHWM``, from
``/proc/<pid>/status``).

Goals (issue 9), printed with the measured values and PASS/FAIL:

- agents 2-4 of the cold sequence: time to first token <= 0.05x the first agent's cold one;
- the warm sequence: prompt processing (the sum of its calls' time to first token) <= 10% of
  its wall time (for reference: the original Writer Assistant repeated a five-call sequence on
  this story in 21.6 s on this machine);
- interleave: each story switch's time to first token <= 0.1x its story's cold one (Alice:
  the cold sequence's writer; Holmes: its first call, the interleave's Holmes writer);
- resident memory growth (peak ``VmHWM`` over the baseline before the first call) within the
  prefix cache's byte budget, ``PREFIX_CACHE_RAM_BYTES``, beyond what the same workloads grow
  with the cache off (when that configuration ran too);
- decode tokens/s, server over raw llama-cpp-python, >= 0.95.

Then one table side by side: wall time of the cold sequence, the warm sequence and the
interleave per configuration, with ratios against ``cache off``. These machines are noisy:
compare figures of one run, not across runs.

    cd backend && ../.venv/bin/python -m bench.bench_agents
    cd backend && ../.venv/bin/python -m bench.bench_agents --configs "cache on" "cache off"
    cd backend && ../.venv/bin/python -m bench.bench_agents --configs on q8 --ram-bytes 300000000

A full run (three configurations) took 12.3 minutes on a quiet 2-core machine; under load from
other processes it takes much longer (one configuration took 36 minutes at a load average of 5,
with no prefix cache in the server yet), and decode figures mean little then: the report gives
the load average around each configuration.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import connect_sse

BACKEND = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BACKEND / "examples"))

from alice_context import build_request as alice_request  # noqa: E402 - after the path insert
from holmes_context import build_request as holmes_request  # noqa: E402

from app.config import Settings, environment_names  # noqa: E402

#: Server environment per configuration (on top of the common one in :func:`server_env`).
CONFIGS: dict[str, dict[str, str]] = {
    "cache on": {"PREFIX_CACHE_ENABLED": "true"},
    "cache off": {"PREFIX_CACHE_ENABLED": "false"},
    "cache on, q8_0 KV": {"PREFIX_CACHE_ENABLED": "true", "LLM_KV_CACHE_TYPE": "q8_0",
                          "LLM_FLASH_ATTN": "true"},
    "cache on, flash attention": {"PREFIX_CACHE_ENABLED": "true", "LLM_FLASH_ATTN": "true"},
}
#: Short names accepted by ``--configs``.
ALIASES = {"on": "cache on", "off": "cache off", "q8": "cache on, q8_0 KV",
           "q8_0": "cache on, q8_0 KV", "fa": "cache on, flash attention"}
#: The configuration the others are compared with in the side-by-side table.
BASELINE = "cache off"
#: Prefix of the prefix cache's Prometheus series.
METRIC_PREFIX = "writer_assistant_prefix_cache"
#: Seconds to wait for a server's model to be ready.
READY_TIMEOUT_S = 180
#: Client timeout of one call in seconds (a cold q8_0 prompt on 2 cores takes minutes).
CALL_TIMEOUT_S = 1200
MIB = 1024 * 1024

#: Goals from issue 9.
GOAL_COLD_RATIO = 0.05
GOAL_WARM_SHARE = 0.10
GOAL_SWITCH_RATIO = 0.1
GOAL_DECODE_RATIO = 0.95


@dataclass
class Story:
    """One story and the bodies of the calls made on it."""

    name: str
    context: dict[str, Any]
    writer: dict[str, Any]
    last_chapter: int
    character: str
    character_plot_point: str
    rater_plot_point: str


@dataclass
class Call:
    """One HTTP call and what its answer said. Times in seconds; ``None`` where the answer
    did not say (an error body has no timings)."""

    label: str
    story: str
    status: int
    code: str | None = None
    prompt_tokens: int | None = None
    cached_tokens: int = 0
    shared_prefix_tokens: int | None = None
    ttft_s: float | None = None
    total_s: float | None = None
    wall_s: float = 0.0
    attempts: int | None = None


@dataclass
class Workload:
    """The calls of one workload, its client wall time (s), the prefix cache series before and
    after it, and the server's memory after it (bytes)."""

    name: str
    calls: list[Call] = field(default_factory=list)
    wall_s: float = 0.0
    metrics_before: dict[str, float] = field(default_factory=dict)
    metrics_after: dict[str, float] = field(default_factory=dict)
    rss_after: int = 0
    hwm_after: int = 0


@dataclass
class Decode:
    """Decode speed of server and raw llama-cpp-python in tokens/s (medians of the rounds)."""

    prompt_tokens: int
    kv_type: str
    raw_tps: float
    server_tps: float
    server_reported_tps: float | None
    raw_tokens: float
    server_tokens: float


@dataclass
class ConfigResult:
    """Everything measured on one server."""

    name: str
    env: dict[str, str]
    notes: list[str] = field(default_factory=list)
    workloads: dict[str, Workload] = field(default_factory=dict)
    rss_before: int = 0
    decode: Decode | None = None
    decode_error: str | None = None
    ram_budget: int | None = None
    wall_s: float = 0.0
    load: tuple[float, float] = (0.0, 0.0)


# --- server -----------------------------------------------------------------------------------


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(config: dict[str, str], data_dir: Path, ram_bytes: int | None) -> dict[str, str]:
    """The environment of one server: ours, minus settings a configuration sets or that would
    make a fresh server warm (the disk tier), plus the configuration's."""
    env = dict(os.environ)
    for name in ("PREFIX_CACHE_ENABLED", "LLM_KV_CACHE_TYPE", "PREFIX_CACHE_DIR",
                 "LLM_FLASH_ATTN"):
        env.pop(name, None)
    env.update(
        SUMMARY_CACHE_DIR=str(data_dir / "summary-cache"),
        ARCHIVE_DB_PATH=str(data_dir / "archive"),
        ARCHIVE_ENABLED="false",
        RATE_LIMIT_PER_MINUTE="0",
        RATE_LIMIT_CONCURRENT="0",
        LOG_LEVEL="WARNING",
    )
    if ram_bytes is not None:
        env["PREFIX_CACHE_RAM_BYTES"] = str(ram_bytes)
    env.update(config)
    return env


@contextmanager
def running_server(env_overrides: dict[str, str], ram_bytes: int | None
                   ) -> Iterator[tuple[subprocess.Popen, str]]:
    """Start a server as a subprocess (working directory: a fresh temporary directory, so every
    relative data path is its own; ``backend/.env`` is copied there when it exists), wait until
    ``/health`` says the model is ready, yield ``(process, base_url)``, then stop it.

    Raises:
        SystemExit: the server exited, or its model was not ready in ``READY_TIMEOUT_S``
            (its log's tail is printed).
    """
    with tempfile.TemporaryDirectory(prefix="bench-agents-") as tmp:
        data_dir = Path(tmp)
        if (BACKEND / ".env").is_file():
            shutil.copy(BACKEND / ".env", data_dir / ".env")
        env = server_env(env_overrides, data_dir, ram_bytes)
        port = free_port()
        log_path = data_dir / "server.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory",
                 "--app-dir", str(BACKEND), "--host", "127.0.0.1", "--port", str(port),
                 "--log-level", "warning"],
                cwd=data_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(process, base, log_path)
            yield process, base
        finally:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_ready(process: subprocess.Popen, base: str, log_path: Path) -> None:
    """Poll ``/health`` every 0.2 s until ``model_status`` is ``ready``.

    Raises:
        SystemExit: the process exited, the model failed to load, or ``READY_TIMEOUT_S`` passed.
    """
    deadline = time.monotonic() + READY_TIMEOUT_S
    problem = "its model was not ready in time"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            problem = f"it exited with status {process.returncode}"
            break
        try:
            health = httpx.get(f"{base}/health", timeout=2).json()
            if health.get("model_status") == "ready":
                return
            if health.get("model_status") == "error":
                problem = f"its model failed to load: {health.get('error')}"
                break
        except (httpx.TransportError, ValueError):
            pass
        time.sleep(0.2)
    process.kill()
    tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
    raise SystemExit(f"server did not start: {problem}\n--- server log (tail) ---\n{tail}")


def memory(pid: int) -> tuple[int, int]:
    """``(VmRSS, VmHWM)`` of process ``pid`` in bytes: resident memory now and its peak."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024  # the kernel reports kB
    return values.get("VmRSS", 0), values.get("VmHWM", 0)


def scrape(http: httpx.Client) -> dict[str, float]:
    """The prefix cache's series from ``GET /metrics``: ``{series: value}``, a series being the
    name with its labels; histogram buckets are left out (their sum and count stay). Empty when
    the server has none (or no ``/metrics``)."""
    try:
        text = http.get("/metrics").text
    except httpx.HTTPError:
        return {}
    series = {}
    for line in text.splitlines():
        if not line.startswith(METRIC_PREFIX):
            continue
        key, _, value = line.rpartition(" ")
        if "_bucket{" in key or key.endswith("_created") or "_created{" in key:
            continue
        try:
            series[key] = float(value)
        except ValueError:
            continue
    return series


# --- calls ------------------------------------------------------------------------------------


def _dig(body: Any, *path: str) -> Any:
    """``body[path[0]][path[1]]...``, or None where a step is missing or not a mapping."""
    for key in path:
        if not isinstance(body, dict):
            return None
        body = body.get(key)
    return body


def post(http: httpx.Client, path: str, body: dict[str, Any], label: str, story: str) -> Call:
    """POST ``body`` to ``/api/v1/<path>`` and record the answer; never raises on an error
    answer (it is recorded with its code). Times in seconds."""
    start = time.perf_counter()
    try:
        response = http.post(f"/api/v1/{path}", json=body)
        status = response.status_code
        try:
            answer = response.json()
        except ValueError:
            answer = {}
    except httpx.HTTPError as error:
        status, answer = 0, {"error": {"code": type(error).__name__}}
    call = Call(label=label, story=story, status=status, wall_s=time.perf_counter() - start)
    if status != 200:
        call.code = _dig(answer, "error", "code") or f"http_{status}"
    # an error body may carry timings in its details; a success has them at the top
    timings = answer.get("timings") or _dig(answer, "error", "details", "timings") or {}
    usage = answer.get("usage") or _dig(answer, "error", "details", "usage") or {}
    if timings.get("time_to_first_token_ms") is not None:
        call.ttft_s = timings["time_to_first_token_ms"] / 1000
    if timings.get("total_ms") is not None:
        call.total_s = timings["total_ms"] / 1000
    call.prompt_tokens = usage.get("prompt_tokens")
    call.cached_tokens = _dig(usage, "prompt_tokens_details", "cached_tokens") or 0
    call.shared_prefix_tokens = _dig(answer, "context_metadata", "shared_prefix_tokens")
    call.attempts = answer.get("attempts")
    return call


def agent_calls(story: Story, max_tokens: int, json_max_tokens: int
                ) -> dict[str, tuple[str, dict[str, Any]]]:
    """The four agent calls on ``story``: ``{agent: (path, body)}``."""
    common = {"temperature": 0.0, "seed": 1}
    ctx = {"structured_context": story.context}
    return {
        "writer": ("generate-chapter", {**story.writer, **common, "max_tokens": max_tokens}),
        "editor": ("editor-review", {**ctx, **common, "max_tokens": json_max_tokens,
                                     "chapter_number": story.last_chapter}),
        "character": ("character-feedback", {**ctx, **common, "max_tokens": json_max_tokens,
                                             "character_name": story.character,
                                             "plot_point": story.character_plot_point}),
        "rater": ("rater-feedback", {**ctx, **common, "max_tokens": json_max_tokens,
                                     "plot_point": story.rater_plot_point}),
    }


def run_workload(http: httpx.Client, pid: int, name: str,
                 steps: list[tuple[str, Story, str, dict[str, Any]]]) -> Workload:
    """Make ``steps`` (``(label, story, path, body)``) one after another; record each call,
    the workload's client wall time (s), the prefix cache series around it and the server's
    memory after it."""
    workload = Workload(name=name, metrics_before=scrape(http))
    start = time.perf_counter()
    for label, story, path, body in steps:
        call = post(http, path, body, label, story.name)
        workload.calls.append(call)
        ttft = f"{call.ttft_s:.2f} s" if call.ttft_s is not None else "-"
        print(f"  .. {name:10} {label:18} HTTP {call.status} {call.code or ''} "
              f"TTFT {ttft}, wall {call.wall_s:.1f} s", file=sys.stderr, flush=True)
    workload.wall_s = time.perf_counter() - start
    workload.metrics_after = scrape(http)
    workload.rss_after, workload.hwm_after = memory(pid)
    return workload


# --- decode -----------------------------------------------------------------------------------


def stream_decode(http: httpx.Client, body: dict[str, Any]) -> dict[str, float | None]:
    """Stream ``body`` from ``/api/v1/generate-chapter/stream``: completion tokens and decode
    tokens/s at the client (between the first and the last ``token`` event), plus the server's
    own ``decode_tokens_per_s``.

    Raises:
        RuntimeError: the stream ended with an ``error`` event or without ``done``.
    """
    times: list[float] = []
    done: dict[str, Any] = {}
    with connect_sse(http, "POST", "/api/v1/generate-chapter/stream", json=body) as source:
        for event in source.iter_sse():
            if event.event == "token":
                times.append(time.perf_counter())
            elif event.event == "done":
                done = json.loads(event.data)
            elif event.event == "error":
                raise RuntimeError(f"stream error: {event.data}")
    if not done or len(times) < 2:
        raise RuntimeError("stream ended without a done event or with fewer than 2 tokens")
    tokens = done["usage"]["completion_tokens"]
    span = times[-1] - times[0]
    return {"tokens": tokens, "tps": (tokens - 1) / span if span > 0 else 0.0,
            "reported_tps": _dig(done, "timings", "decode_tokens_per_s")}


def raw_decode(llama: Any, tokens: list[int], max_tokens: int, settings: Settings
               ) -> dict[str, float]:
    """Raw llama-cpp-python on ``tokens`` with the server's sampling (greedy, seed 1):
    completion tokens and decode tokens/s between the first and the last streamed piece. The
    first round processes the prompt; later ones reuse it from the KV cache, as the server
    does."""
    from llama_cpp import StoppingCriteriaList

    times: list[float] = []
    checks = 0

    def count(_ids: Any, _logits: Any) -> bool:
        nonlocal checks
        checks += 1  # once per sampled token, and once more at the end (as in the server)
        return False

    for chunk in llama.create_completion(
        tokens, max_tokens=max_tokens, temperature=0.0, top_p=settings.model.sampling.top_p,
        top_k=settings.model.sampling.top_k,
        repeat_penalty=settings.model.sampling.repeat_penalty, seed=1,
        stream=True, stopping_criteria=StoppingCriteriaList([count]),
    ):
        if chunk["choices"][0]["text"]:
            times.append(time.perf_counter())
    produced = checks - 1
    if produced < max_tokens:
        produced -= 1  # the end-of-generation token was sampled, not produced
    span = times[-1] - times[0] if len(times) > 1 else 0.0
    return {"tokens": produced, "tps": (produced - 1) / span if span > 0 else 0.0}


def measure_decode(http: httpx.Client, body: dict[str, Any], kv_type: str, flash_attn: bool,
                   rounds: int) -> Decode:
    """Server against raw decode speed on the prompt the server renders for ``body`` (a
    generate-chapter request), ``rounds`` interleaved rounds, medians in tokens/s. The raw
    model is loaded with the server's settings and KV cache type ``kv_type`` and freed before
    returning."""
    import llama_cpp
    from llama_cpp import Llama

    from app.llm.llama import default_model_path

    settings = Settings(llm_kv_cache_type=kv_type, llm_flash_attn=flash_attn)
    preview = http.post("/api/v1/context/preview",
                        json={"operation": "generate-chapter", "request": body})
    preview.raise_for_status()
    prompt = preview.json()["prompt"]
    threads = settings.model.n_threads or os.cpu_count() or 1
    kv = {"f16": llama_cpp.GGML_TYPE_F16, "q8_0": llama_cpp.GGML_TYPE_Q8_0}[kv_type]
    llama = Llama(model_path=str(settings.model.path or default_model_path()),
                  n_ctx=settings.model.n_ctx, n_threads=threads, n_threads_batch=threads,
                  n_batch=settings.model.n_batch, flash_attn=settings.model.flash_attn,
                  type_k=kv, type_v=kv, verbose=False)
    try:
        tokens = llama.tokenize(prompt.encode(), add_bos=False, special=True)
        raw, server = [], []
        for _ in range(rounds):
            raw.append(raw_decode(llama, tokens, body["max_tokens"], settings))
            server.append(stream_decode(http, body))
    finally:
        llama.close()
        del llama
        gc.collect()
    reported = [s["reported_tps"] for s in server if s["reported_tps"] is not None]
    return Decode(
        prompt_tokens=len(tokens), kv_type=kv_type,
        raw_tps=statistics.median(r["tps"] for r in raw),
        server_tps=statistics.median(s["tps"] for s in server),
        server_reported_tps=statistics.median(reported) if reported else None,
        raw_tokens=statistics.median(r["tokens"] for r in raw),
        server_tokens=statistics.median(s["tokens"] for s in server),
    )


# --- one configuration ------------------------------------------------------------------------


def server_kv_type(env: dict[str, str]) -> tuple[str, str | None]:
    """The KV cache type a server with ``env`` runs, and a note when it cannot run what the
    configuration asks (the server has no such setting)."""
    wanted = env.get("LLM_KV_CACHE_TYPE", "f16")
    if wanted != "f16" and "LLM_KV_CACHE_TYPE" not in environment_names():
        return "f16", f"this server has no LLM_KV_CACHE_TYPE setting: it runs f16, not {wanted}"
    return wanted, None


def run_config(name: str, stories: dict[str, Story], args: argparse.Namespace) -> ConfigResult:
    """Start a fresh server for configuration ``name``, run the workloads and the decode
    measurement on it, and stop it."""
    env = CONFIGS[name]
    result = ConfigResult(name=name, env=dict(env))
    if "PREFIX_CACHE_ENABLED" not in environment_names():
        result.notes.append("this server has no PREFIX_CACHE_* settings: no prefix cache")
    kv_type, note = server_kv_type(env)
    if note:
        result.notes.append(note)
    result.ram_budget = args.ram_bytes
    if result.ram_budget is None:
        result.ram_budget = Settings().model.prefix_cache.ram_bytes
    print(f"== {name}: starting a server ({', '.join(f'{k}={v}' for k, v in env.items())})",
          file=sys.stderr, flush=True)
    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    alice, holmes = stories["alice"], stories["holmes"]
    calls = {key: agent_calls(story, args.max_tokens, args.json_max_tokens)
             for key, story in stories.items()}
    sequence = [(agent, alice, path, body)
                for agent, (path, body) in calls["alice"].items()]
    interleave = []
    for agent in ("writer", "editor", "character"):
        for key, story in (("alice", alice), ("holmes", holmes)):
            path, body = calls[key][agent]
            interleave.append((f"{key} {agent}", story, path, body))
    with running_server(env, args.ram_bytes) as (process, base), \
            httpx.Client(base_url=base, timeout=CALL_TIMEOUT_S) as http:
        result.rss_before = memory(process.pid)[0]
        result.workloads["cold"] = run_workload(http, process.pid, "cold", sequence)
        result.workloads["warm"] = run_workload(http, process.pid, "warm", sequence)
        result.workloads["interleave"] = run_workload(http, process.pid, "interleave",
                                                      interleave)
        if args.decode_rounds > 0:
            body = {**calls["holmes"]["writer"][1], "max_tokens": args.decode_tokens}
            try:
                flash_attn = env.get("LLM_FLASH_ATTN",
                                     str(Settings.model_fields["llm_flash_attn"].default))
                result.decode = measure_decode(http, body, kv_type,
                                               flash_attn.lower() == "true", args.decode_rounds)
            except (RuntimeError, httpx.HTTPError, ValueError) as error:
                result.decode_error = str(error)[:300]
    result.wall_s = time.perf_counter() - started
    result.load = (load_start, os.getloadavg()[0])
    return result


# --- report -----------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str, missing: str = "-") -> str:
    """``value`` formatted with ``spec``, or ``missing`` when it is None."""
    return missing if value is None else format(value, spec)


def _times(ratio: float | None) -> str:
    """A ratio as ``0.047x``, or ``n/a``."""
    return "n/a" if ratio is None else f"{ratio:.3f}x"


def _ratio(value: float | None, reference: float | None) -> float | None:
    """``value / reference``, or None when either is missing or the reference is 0."""
    return value / reference if value is not None and reference else None


def _mark(ok: bool | None) -> str:
    """PASS, FAIL, or n/a when the figure could not be measured."""
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def _peak_growth(result: ConfigResult) -> int:
    """Peak resident memory (VmHWM after the workloads) over the baseline before the first
    call, in bytes."""
    return max(w.hwm_after for w in result.workloads.values()) - result.rss_before


def cold_reference(result: ConfigResult) -> dict[str, float | None]:
    """Each story's cold time to first token in seconds: Alice's from the cold sequence's first
    call, Holmes's from its first call in the interleave."""
    cold = result.workloads["cold"].calls[0].ttft_s
    holmes = next((c.ttft_s for c in result.workloads["interleave"].calls
                   if c.story == "holmes"), None)
    return {"alice": cold, "holmes": holmes}


def print_calls(result: ConfigResult) -> None:
    """The per-call table of one configuration (times in seconds; ``%``: cached tokens over
    prompt tokens; ``/cold1``: time to first token over the cold sequence's first call's)."""
    first = result.workloads["cold"].calls[0].ttft_s
    print(f"{'workload':10} {'call':17} {'HTTP':>4} {'prompt':>6} {'cached':>6} {'%':>5} "
          f"{'shared':>6} {'TTFT':>7} {'/cold1':>6} {'total':>7} {'wall':>7} att")
    for workload in result.workloads.values():
        for call in workload.calls:
            share = _ratio(100 * call.cached_tokens, call.prompt_tokens)
            print(f"{workload.name:10} {call.label:17} {call.status:>4} "
                  f"{_fmt(call.prompt_tokens, 'd'):>6} {call.cached_tokens:>6} "
                  f"{_fmt(share, '.1f'):>5} {_fmt(call.shared_prefix_tokens, 'd'):>6} "
                  f"{_fmt(call.ttft_s, '.2f'):>7} {_fmt(_ratio(call.ttft_s, first), '.3f'):>6} "
                  f"{_fmt(call.total_s, '.2f'):>7} {call.wall_s:7.2f} "
                  f"{_fmt(call.attempts, 'd'):>3}{' !' if call.code else ''}")
        print(f"{workload.name:10} {'(sums; wall)':17} {'':>4} "
              f"{sum(c.prompt_tokens or 0 for c in workload.calls):>6} "
              f"{sum(c.cached_tokens for c in workload.calls):>6} {'':>5} {'':>6} "
              f"{sum(c.ttft_s or 0 for c in workload.calls):7.2f} {'':>6} {'':>7} "
              f"{workload.wall_s:7.2f}")
    for workload in result.workloads.values():
        for call in workload.calls:
            if call.code:
                print(f"! {workload.name} {call.label}: HTTP {call.status} {call.code} after "
                      f"{call.wall_s:.1f} s")


def _number(value: float | None) -> str:
    """A metric's value: whole numbers in full, others to 6 significant digits; ``-`` when
    missing."""
    if value is None:
        return "-"
    return f"{value:.0f}" if value.is_integer() else f"{value:.6g}"


def _counter(series: dict[str, float], name: str) -> float | None:
    """The value of the prefix cache's series ``name`` (with or without ``_total``)."""
    for key in (f"{METRIC_PREFIX}_{name}_total", f"{METRIC_PREFIX}_{name}"):
        if key in series:
            return series[key]
    return None


def snapshot_figures(result: ConfigResult) -> dict[str, float | None]:
    """Snapshot figures over all the workloads of ``result``, from the prefix cache's counters
    (``saves``, ``restores``, ``save_seconds``, ``restore_seconds``, ``saved_bytes``,
    ``saved_tokens``): saves and restores (counts), seconds per save and per restore, seconds
    and MiB per 1,000 saved tokens. None where the server has no such counter."""
    first = result.workloads["cold"].metrics_before
    last = result.workloads["interleave"].metrics_after

    def delta(name: str) -> float | None:
        after = _counter(last, name)
        return None if after is None else after - (_counter(first, name) or 0.0)

    saves, restores, tokens = delta("saves"), delta("restores"), delta("saved_tokens")
    save_s, restore_s, saved_bytes = delta("save_seconds"), delta("restore_seconds"), \
        delta("saved_bytes")
    return {
        "saves": saves, "restores": restores,
        "save_s": _ratio(save_s, saves), "restore_s": _ratio(restore_s, restores),
        "save_s_per_1k": _ratio(save_s and 1000 * save_s, tokens),
        "mib_per_1k": _ratio(saved_bytes and 1000 * saved_bytes / MIB, tokens),
    }


def print_metrics(result: ConfigResult) -> None:
    """The server's resident memory (MiB) and the prefix cache's Prometheus series after each
    workload, then the snapshot figures over the run (:func:`snapshot_figures`)."""
    print(f"resident memory before the first call: VmRSS {result.rss_before / MIB:.0f} MiB")
    for workload in result.workloads.values():
        print(f"after {workload.name}: VmRSS {workload.rss_after / MIB:.0f} MiB, "
              f"peak VmHWM {workload.hwm_after / MIB:.0f} MiB")
    keys = list(dict.fromkeys(k for w in result.workloads.values() for k in w.metrics_after))
    if not keys:
        print(f"no {METRIC_PREFIX}* series on /metrics")
        return
    print(f"{METRIC_PREFIX}_* after each workload:")
    print(f"  {'series':44}" + "".join(f"{name:>14}" for name in result.workloads))
    for key in keys:
        print(f"  {key[len(METRIC_PREFIX) + 1:]:44}"
              + "".join(f"{_number(w.metrics_after.get(key)):>14}"
                        for w in result.workloads.values()))
    figures = snapshot_figures(result)
    print(textwrap.fill(
        f"snapshots over the run: {_fmt(figures['saves'], '.0f')} saved, "
        f"{_fmt(figures['save_s'], '.3f')} s each, {_fmt(figures['save_s_per_1k'], '.3f')} s "
        f"and {_fmt(figures['mib_per_1k'], '.2f')} MiB per 1,000 tokens; "
        f"{_fmt(figures['restores'], '.0f')} restored, {_fmt(figures['restore_s'], '.3f')} s each",
        100, subsequent_indent="  "))


def goals(result: ConfigResult, baseline: ConfigResult | None
          ) -> list[tuple[str, str, bool | None]]:
    """The goal lines of one configuration: ``(goal, measured, passed)``; passed is None when
    a figure could not be measured (a failed call has no timings)."""
    lines: list[tuple[str, str, bool | None]] = []

    cold = result.workloads["cold"].calls
    first = cold[0].ttft_s
    ratios = [(c.label, _ratio(c.ttft_s, first)) for c in cold[1:]]
    lines.append((
        f"cold sequence, agents 2-4: TTFT <= {GOAL_COLD_RATIO}x the first's",
        f"first {_fmt(first, '.2f')} s; " + ", ".join(f"{n} {_times(r)}" for n, r in ratios),
        None if any(r is None for _, r in ratios) else all(r <= GOAL_COLD_RATIO
                                                           for _, r in ratios)))

    warm = result.workloads["warm"]
    prompt_s = sum(c.ttft_s or 0.0 for c in warm.calls)
    missing = sum(c.ttft_s is None for c in warm.calls)
    share = _ratio(prompt_s, warm.wall_s)
    lines.append((
        f"warm sequence: prompt processing (sum of TTFT) <= {GOAL_WARM_SHARE:.0%} of its wall",
        f"{prompt_s:.2f} s of {warm.wall_s:.2f} s = {_fmt(share, '.1%')}"
        + (f" ({missing} call(s) without timings)" if missing else ""),
        None if share is None or missing else share <= GOAL_WARM_SHARE))

    reference = cold_reference(result)
    seen: set[str] = set()
    switches = []
    for call in result.workloads["interleave"].calls:
        if call.story in seen:
            switches.append((call.label, _ratio(call.ttft_s, reference[call.story])))
        seen.add(call.story)
    lines.append((
        f"interleave: each story switch TTFT <= {GOAL_SWITCH_RATIO}x its story's cold",
        f"cold alice {_fmt(reference['alice'], '.2f')} s, holmes "
        f"{_fmt(reference['holmes'], '.2f')} s; "
        + ", ".join(f"{n} {_times(r)}" for n, r in switches),
        None if not switches or any(r is None for _, r in switches)
        else all(r <= GOAL_SWITCH_RATIO for _, r in switches)))

    growth = _peak_growth(result)
    measured = f"peak RSS growth {growth / MIB:.0f} MiB"
    extra = growth
    if baseline is not None and baseline is not result:
        base_growth = _peak_growth(baseline)
        extra = growth - base_growth
        measured += f", {extra / MIB:+.0f} MiB over {baseline.name}'s {base_growth / MIB:.0f}"
    held = max((_counter(w.metrics_after, "memory_bytes") or 0.0
                for w in result.workloads.values()), default=0.0)
    if held:
        measured += f"; snapshots held at most {held / MIB:.0f} MiB"
    budget = result.ram_budget
    measured += "; budget " + ("unknown" if budget is None else f"{budget / MIB:.0f} MiB")
    lines.append(("memory: RSS growth within PREFIX_CACHE_RAM_BYTES", measured,
                  None if budget is None else extra <= budget))

    decode = result.decode
    if decode is None:
        measured, ok = result.decode_error or "not measured (--decode-rounds 0)", None
    else:
        ratio = _ratio(decode.server_tps, decode.raw_tps)
        measured = (f"{decode.server_tps:.1f} / {decode.raw_tps:.1f} tokens/s = "
                    f"{_fmt(ratio, '.3f')} (server's own {_fmt(decode.server_reported_tps, '.1f')};"
                    f" {decode.prompt_tokens} prompt tokens; completion "
                    f"{decode.server_tokens:.0f} / {decode.raw_tokens:.0f}; KV {decode.kv_type})")
        ok = None if ratio is None else ratio >= GOAL_DECODE_RATIO
    lines.append((f"decode tokens/s, server / raw llama-cpp-python >= {GOAL_DECODE_RATIO}",
                  measured, ok))
    return lines


def print_config(result: ConfigResult, baseline: ConfigResult | None) -> None:
    """The whole report of one configuration."""
    env = ", ".join(f"{k}={v}" for k, v in result.env.items())
    budget = "unknown" if result.ram_budget is None else f"{result.ram_budget / MIB:.0f} MiB"
    print(f"\n=== {result.name} ({result.wall_s / 60:.1f} min) ===")
    print(f"server: {env}; PREFIX_CACHE_RAM_BYTES {budget}")
    print(f"load average (1 min) at its start {result.load[0]:.1f}, at its end "
          f"{result.load[1]:.1f}, on {os.cpu_count()} CPUs")
    for note in result.notes:
        print(f"note: {note}")
    print_calls(result)
    print_metrics(result)
    print("goals:")
    for goal, measured, ok in goals(result, baseline):
        print(f"  [{_mark(ok):4}] {goal}")
        print(textwrap.fill(measured, 100, initial_indent=" " * 9, subsequent_indent=" " * 9))


#: Short column names of the configurations in the side-by-side table.
SHORT = {"cache on": "on", "cache off": "off", "cache on, q8_0 KV": "q8_0",
         "cache on, flash attention": "fa"}


def print_side_by_side(results: list[ConfigResult]) -> None:
    """Wall times (s) and other figures per configuration, with ratios against
    :data:`BASELINE` where it ran."""
    baseline = next((r for r in results if r.name == BASELINE), None)
    others = [r for r in results if r is not baseline] if baseline else []
    print(f"\n=== side by side: {', '.join(f'{SHORT[r.name]} = {r.name}' for r in results)} ===")
    print(f"{'':28}" + "".join(f"{SHORT[r.name]:>10}" for r in results)
          + "".join(f"{SHORT[r.name] + '/off':>10}" for r in others))

    def row(label: str, value: Any, spec: str = ".2f") -> None:
        line = f"{label:28}" + "".join(f"{_fmt(value(r), spec):>10}" for r in results)
        if baseline is not None:
            line += "".join(f"{_fmt(_ratio(value(r), value(baseline)), '.3f'):>10}"
                            for r in others)
        print(line)

    row("cold sequence wall, s", lambda r: r.workloads["cold"].wall_s)
    row("warm sequence wall, s", lambda r: r.workloads["warm"].wall_s)
    row("interleave wall, s", lambda r: r.workloads["interleave"].wall_s)
    row("cold first TTFT, s", lambda r: r.workloads["cold"].calls[0].ttft_s)
    row("warm sum of TTFT, s", lambda r: sum(c.ttft_s or 0 for c in r.workloads["warm"].calls))
    row("interleave sum of TTFT, s",
        lambda r: sum(c.ttft_s or 0 for c in r.workloads["interleave"].calls))
    row("cached tokens, all calls",
        lambda r: sum(c.cached_tokens for w in r.workloads.values() for c in w.calls), "d")
    row("failed calls", lambda r: sum(c.status != 200 for w in r.workloads.values()
                                      for c in w.calls), "d")
    row("peak RSS growth, MiB", lambda r: _peak_growth(r) / MIB, ".0f")
    row("snapshot save, s each", lambda r: snapshot_figures(r)["save_s"], ".3f")
    row("snapshot restore, s each", lambda r: snapshot_figures(r)["restore_s"], ".3f")
    row("snapshot MiB / 1k tokens", lambda r: snapshot_figures(r)["mib_per_1k"], ".2f")
    row("decode tokens/s, server", lambda r: r.decode.server_tps if r.decode else None, ".1f")
    row("decode server/raw",
        lambda r: _ratio(r.decode.server_tps, r.decode.raw_tps) if r.decode else None, ".3f")


# --- main -------------------------------------------------------------------------------------


def load_stories(holmes_chapters: int) -> dict[str, Story]:
    """Alice (chapters 1-2) and Holmes (the first ``holmes_chapters`` parts of "A Scandal in
    Bohemia")."""
    alice = alice_request(chapters=2)
    alice.update(chapter_number=3)
    holmes = holmes_request(chapters=holmes_chapters)
    return {
        "alice": Story(
            name="alice", context=alice["structured_context"], writer=alice, last_chapter=2,
            character="Alice",
            character_plot_point="Alice, nine feet tall, hears the White Rabbit's feet "
                                 "pattering in the distance and calls to him for help.",
            rater_plot_point="Alice cries a pool of tears, shrinks and swims in it with a "
                             "Mouse who is frightened of cats."),
        "holmes": Story(
            name="holmes", context=holmes["structured_context"], writer=holmes,
            last_chapter=holmes_chapters, character="Sherlock Holmes",
            character_plot_point="Disguised as a groom, Holmes is called in as the witness "
                                 "of Irene Adler's hurried wedding at the Church of St. "
                                 "Monica.",
            rater_plot_point="Holmes plans a false alarm of fire so that Irene Adler betrays "
                             "where she hides the photograph."),
    }


def parse_args() -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS),
                        help=f"configurations to run, in order: {', '.join(map(repr, CONFIGS))} "
                             f"or {', '.join(ALIASES)} (default: all three)")
    parser.add_argument("--ram-bytes", type=int, default=None,
                        help="PREFIX_CACHE_RAM_BYTES for every server (default: the server's)")
    parser.add_argument("--max-tokens", type=int, default=64,
                        help="completion tokens of the writer calls")
    parser.add_argument("--json-max-tokens", type=int, default=300,
                        help="completion tokens of the JSON agents (editor, character, rater)")
    parser.add_argument("--holmes-chapters", type=int, default=1,
                        help="parts of 'A Scandal in Bohemia' in the Holmes story (1 fits the "
                             "window without distillation)")
    parser.add_argument("--decode-tokens", type=int, default=128,
                        help="completion tokens of each decode-speed round")
    parser.add_argument("--decode-rounds", type=int, default=2,
                        help="interleaved raw/server decode rounds (0: skip)")
    args = parser.parse_args()
    names = []
    for given in args.configs:
        name = ALIASES.get(given, given)
        if name not in CONFIGS:
            parser.error(f"unknown configuration {name!r}; choose from {list(CONFIGS)} "
                         f"or {list(ALIASES)}")
        names.append(name)
    args.configs = names
    return args


def main() -> None:
    args = parse_args()
    stories = load_stories(args.holmes_chapters)
    started = time.perf_counter()
    results = [run_config(name, stories, args) for name in args.configs]
    elapsed_min = (time.perf_counter() - started) / 60
    print(f"agents benchmark: {', '.join(args.configs)}; {elapsed_min:.1f} min in all")
    print(f"max_tokens: writer {args.max_tokens}, JSON agents {args.json_max_tokens} (with 64 or "
          "200 the character agent's")
    print("answer did not fit: 422 max_tokens_too_small); temperature 0, seed 1. The editor "
          "reviews the")
    print("story's last chapter by number. Times in seconds. TTFT: the server's time to first "
          "token;")
    print("/cold1: TTFT over the cold sequence's first call's; shared: the shared block's tokens "
          "(from")
    print("context_metadata); att: attempts (2: the JSON agent's repair attempt); a failed call "
          "is")
    print("marked ! and listed below its table.")
    baseline = next((r for r in results if r.name == BASELINE), None)
    for result in results:
        print_config(result, baseline)
    print_side_by_side(results)


if __name__ == "__main__":
    main()
