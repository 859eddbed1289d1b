"""The parts of ``bench/bench_load.py``'s fault run that need no model: its command line, the
body builder, the slow reader, and the misbehaving clients against the app on the fake
generator."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from pathlib import Path

import pytest

from app.config import Settings
from app.llm.fake import FakeGenerator
from app.main import create_app
from bench import bench_load
from tests.remote.servers import serve


def test_the_fault_run_has_its_flags_and_defaults() -> None:
    args = bench_load.parse_args(["--faults", "--pause-s", "3", "--big-body-mib", "2"])
    assert args.faults and args.pause_s == 3 and args.big_body_mib == 2
    assert args.pause_after_s == 5 and args.slow_read_s == 40 and args.chroma_timeout_s == 2
    assert not bench_load.parse_args([]).faults
    with pytest.raises(SystemExit):
        bench_load.parse_args(["--faults", "--clients", "0"])


def test_the_big_body_is_exactly_its_size_and_valid_json() -> None:
    data = bench_load.big_body(16 * 1024 * 1024)
    assert len(data) == 16 * 1024 * 1024
    body = json.loads(data)
    assert body["structured_context"]["plot_elements"] and body["max_tokens"] == 8
    with pytest.raises(ValueError, match="below"):
        bench_load.big_body(100)


def _one_connection(sock: socket.socket, answer: bytes, received: list[bytes]) -> None:
    connection, _ = sock.accept()
    with connection:
        received.append(connection.recv(65536))
        with contextlib.suppress(OSError):  # the reader gave up and closed first
            connection.sendall(answer)


def test_the_slow_reader_reads_one_byte_per_interval_until_the_server_closes() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        received: list[bytes] = []
        server = threading.Thread(target=_one_connection,
                                  args=(listener, b"HTTP/1.1 200 OK", received))
        server.start()
        request = bench_load.http_request("POST", "/x", "127.0.0.1", {"A": "b"}, b"{}")
        result = bench_load.slow_read("127.0.0.1", listener.getsockname()[1], request, 10,
                                      interval_s=0.02)
        server.join(5)
    assert received == [request]
    assert request.endswith(b"\r\n\r\n{}") and b"Content-Length: 2\r\n" in request
    assert result.received == 15 and result.head == b"HTTP/1.1 200 OK"
    assert result.closed_by_server and result.seconds >= 15 * 0.02


def test_the_slow_reader_gives_up_after_its_time() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        server = threading.Thread(target=_one_connection,
                                  args=(listener, b"x" * 100_000, []), daemon=True)
        server.start()
        result = bench_load.slow_read("127.0.0.1", listener.getsockname()[1], b"GET", 0.5,
                                      interval_s=0.1)
    assert 1 <= result.received <= 6 and not result.closed_by_server


def test_the_misbehaving_clients_against_the_app(tmp_path: Path) -> None:
    settings = Settings(summary_cache_dir=tmp_path / "summaries", archive_enabled=False,
                        quality_max_retries=0)
    fake = FakeGenerator(replies=["word " * 200], token_delay_s=0.001)

    async def run(base: str) -> tuple[str, str, float | None]:
        body = {**bench_load.SEED, "max_tokens": 100}
        left = await bench_load.leave_after_first_token(base, "unused-key", body)
        big = await bench_load.send_big_body(base, "unused-key", 300_000)
        return left, big, await bench_load.model_free(base, "unused-key", 10)

    with serve(create_app(settings, generator=fake)) as base:
        left, big, free = asyncio.run(run(base))
    assert left.startswith("left at the first token")
    assert big.startswith("422 invalid_request")
    assert free is not None
