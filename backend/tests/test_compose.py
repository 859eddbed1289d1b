"""docker-compose.yml: valid against the Compose specification, and consistent with the settings,
the Dockerfile and the Makefile. Docker does not run on these machines, so this is the check.

The schema is the Compose specification's own ``compose-spec.json``, as vendored (with its
licence) in the ``check-jsonschema`` package; nothing is downloaded.
"""

from __future__ import annotations

import importlib.resources
import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from app.config import Settings, environment_names

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SETTINGS = set(environment_names())
#: ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}
_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def schema() -> dict:
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((vendor / "compose-spec.json").read_text())


def validate(document: dict, schema: dict) -> list[str]:
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    errors = validator_class(schema).iter_errors(document)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {name: str(value) for name, value in env.items()}


def interpolate(value: str) -> str:
    """What compose makes of ``value`` with no variables set: defaults, and a stand-in for a
    required one (shaped like a value the operator must give, e.g. a tenant:key pair)."""
    def one(match: re.Match) -> str:
        op = match.group("op") or ""
        if op.endswith("-"):
            return match.group("arg")
        return "operator:stand-in-value-0123" if op.endswith("?") else ""

    return _VARIABLE.sub(one, value)


def test_the_schema_is_the_compose_specification(schema):
    assert schema["$id"] == "compose_spec.json"
    assert "services" in schema["properties"]


def test_compose_file_validates_against_the_compose_specification(compose, schema):
    assert validate(compose, schema) == []


def test_the_validation_can_fail(compose, schema):
    broken = json.loads(json.dumps(compose))
    broken["services"]["api"]["ports"] = {"8000": 8000}
    broken["services"]["chroma"]["healthcheck"] = {"interval": 10, "tset": ["CMD", "true"]}
    errors = validate(broken, schema)
    assert any(e.startswith("services/api/ports") for e in errors)
    assert any(e.startswith("services/chroma/healthcheck") for e in errors)


def test_every_variable_set_for_the_api_is_a_setting(compose):
    names = set(environment(compose["services"]["api"]))
    assert names - SETTINGS == set(), "not settings in app/config.py"


def test_the_api_environment_defaults_are_valid_settings(compose):
    env = environment(compose["services"]["api"])
    values = {name.lower(): interpolate(value) for name, value in env.items()
              if name in SETTINGS}
    Settings(**values)  # raises on a value the settings refuse


def test_api_keys_are_required(compose):
    value = environment(compose["services"]["api"])["API_KEYS"]
    match = _VARIABLE.fullmatch(value)
    assert match and match.group("name") == "API_KEYS" and match.group("op") == ":?"


def test_only_the_api_publishes_a_port(compose):
    published = {name for name, service in compose["services"].items() if service.get("ports")}
    assert published == {"api"}
    (port,) = compose["services"]["api"]["ports"]
    assert interpolate(port).endswith(":8000")


def test_api_healthcheck_probes_ready(compose):
    test = compose["services"]["api"]["healthcheck"]["test"]
    command = " ".join(test) if isinstance(test, list) else test
    assert "http://127.0.0.1:8000/ready" in command


def test_archive_uses_the_chroma_service_and_its_data_volume(compose):
    services = compose["services"]
    env = environment(services["api"])
    assert env["CHROMA_HOST"] in services and env["CHROMA_PORT"] == "8000"
    chroma = services["chroma"]
    assert chroma["image"].startswith("chromadb/chroma:1.")
    targets = [volume.split(":")[1] for volume in chroma["volumes"]]
    assert targets == ["/data"]  # where the 1.x image keeps its data
    assert chroma["volumes"][0].split(":")[0] in compose["volumes"]


def test_llm_profile_serves_the_url_the_api_points_at(compose):
    services = compose["services"]
    llm = services["llm"]
    assert llm["profiles"] == ["llm"] and "llama.cpp:server" in llm["image"]
    url = urlsplit(interpolate(environment(services["api"])["LLM_BASE_URL"]))
    assert url.hostname == "llm" and url.path == "/v1"
    command = llm["command"]
    assert command[command.index("--port") + 1] == str(url.port)
    assert services["api"]["depends_on"]["llm"]["required"] is False


def test_dockerfile_runs_as_a_non_root_user_with_the_makefile_build_flags(compose):
    build = compose["services"]["api"]["build"]
    dockerfile = ROOT / build["context"] / build["dockerfile"]
    text = dockerfile.read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    makefile = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    make_args = re.search(r"^LLAMA_CMAKE_ARGS \?= (.+)$", makefile, re.MULTILINE).group(1)
    docker_args = re.search(r'^ARG LLAMA_CMAKE_ARGS="([^"]+)"', text, re.MULTILINE).group(1)
    assert docker_args.split() == make_args.split()
    assert 'CMAKE_ARGS="$LLAMA_CMAKE_ARGS"' in text
    assert '"--port", "8000"' in text
    assert (dockerfile.parent / ".dockerignore").is_file()
