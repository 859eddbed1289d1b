"""Fuzz every operation of the OpenAPI schema with schemathesis: no answer may be a 5xx.

Runs against the app on a scripted model that answers every JSON agent with valid JSON, with
a real (temporary) archive, bounded in examples so the suite stays fast.
"""

import time

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings

from app.llm.fake import FakeGenerator
from app.main import create_app
from tests.api.replies import reply


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory):
    from app.config import Settings

    state = tmp_path_factory.mktemp("fuzz")
    app = create_app(Settings(summary_cache_dir=state / "summaries",
                              archive_db_path=state / "archive", rate_limit_per_minute=0,
                              rate_limit_concurrent=0),
                     generator=FakeGenerator(replies=[reply]))
    with TestClient(app) as client:  # runs the lifespan: the archive opens
        deadline = time.monotonic() + 120
        while client.get("/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert client.get("/ready").status_code == 200
        yield app


@pytest.fixture(scope="module")
def api_schema(fuzz_app):
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
def test_no_server_errors(case):
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, response.text[:300])
    if response.status_code >= 400:
        assert set(response.json()["error"]) >= {"code", "message", "param"}
