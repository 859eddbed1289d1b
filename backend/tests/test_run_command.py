"""``uvicorn app.main:app`` (the README's run command, from backend/) serves the app, with
``--workers``; importing ``app.main`` builds nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import BACKEND, _free_port


def test_importing_app_main_builds_no_app():
    code = ("import app.main as m; assert 'app' not in vars(m), 'built at import'; "
            "assert callable(m.create_app)")
    subprocess.run([sys.executable, "-c", code], cwd=BACKEND, check=True, timeout=120)


def _health(base: str) -> dict | None:
    try:
        response = httpx.get(f"{base}/health", timeout=2)
    except httpx.TransportError:
        return None
    return response.json() if response.status_code == 200 else None


def test_uvicorn_app_main_app_serves_with_workers(tmp_path: Path):
    port = _free_port()
    env = {**os.environ, "ARCHIVE_ENABLED": "false", "LOG_LEVEL": "WARNING",
           "SUMMARY_CACHE_DIR": str(tmp_path / "summaries")}
    command = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1",
               "--port", str(port), "--workers", "2"]
    log = (tmp_path / "uvicorn.log").open("wb")
    process = subprocess.Popen(command, cwd=BACKEND, env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120  # two workers load the embedded model
        health = None
        while time.monotonic() < deadline and process.poll() is None:
            health = _health(base)
            if health and health["model_status"] == "ready":
                break
            time.sleep(0.2)
        output = (tmp_path / "uvicorn.log").read_text(errors="replace")[-2000:]
        assert health and health["model_status"] == "ready", (health, output)
        assert httpx.get(f"{base}/docs", timeout=10).status_code == 200
        # each worker loads its own model: the one that answers may still be loading (503)
        while True:
            counted = httpx.post(f"{base}/api/v1/tokens/count", json={"text": "Alice"},
                                 timeout=30)
            if counted.status_code != 503 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert counted.status_code == 200 and counted.json()["tokens"] > 0
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()
