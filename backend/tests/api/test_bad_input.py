"""Bad input gets a 4xx that says what to fix; never a 500."""

import pytest

from app.schemas.context import MAX_ELEMENT_CHARS
from tests.conftest import seed_example


def post(client, path, body):
    response = client.post(f"/api/v1/{path}", json=body)
    assert 400 <= response.status_code < 500, response.text
    error = response.json()["error"]
    assert error["code"] and error["message"]
    return response.status_code, error


def test_malformed_json_is_400(client):
    response = client.post("/api/v1/generate-chapter", content=b'{"structured_context": ',
                           headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


@pytest.mark.parametrize(("mutate", "param"), [
    (lambda b: b["structured_context"].update(plot_elements="nope"),
     "structured_context.plot_elements"),
    (lambda b: b["structured_context"]["plot_elements"][0].update(priority="urgent"),
     "structured_context.plot_elements[0].priority"),
    (lambda b: b["structured_context"]["plot_elements"][0].update(content=""),
     "structured_context.plot_elements[0].content"),
    (lambda b: b["structured_context"]["plot_elements"][0].update(
        content="x" * (MAX_ELEMENT_CHARS + 1)),
     "structured_context.plot_elements[0].content"),
    (lambda b: b["structured_context"]["plot_elements"][0].update(type="Space ship!"),
     "structured_context.plot_elements[0].type"),
    (lambda b: b.update(temperature="hot"), "temperature"),
    (lambda b: b.update(max_tokens=0), "max_tokens"),
    (lambda b: b.update(surprise=True), "surprise"),
])
def test_wrong_types_and_sizes_are_422_naming_the_field(client, mutate, param):
    body = seed_example()
    mutate(body)
    status, error = post(client, "generate-chapter", body)
    assert status == 422
    assert error["param"] == param
    assert param.split(".")[-1].split("[")[0] in error["message"]


def test_max_tokens_above_the_server_limit_is_422(client):
    status, error = post(client, "generate-chapter", {**seed_example(), "max_tokens": 100_000})
    assert status == 422 and error["param"] == "max_tokens" and "limit" in error["message"]


def test_unknown_character_is_422_listing_known_ones(client):
    status, error = post(client, "character-feedback",
                         {**seed_example(), "character_name": "Bob", "plot_point": "Rain."})
    assert status == 422
    assert error["code"] == "unknown_reference" and error["param"] == "character_name"
    assert "Aria" in error["message"]


def test_unknown_chapter_is_422(client):
    body = {**seed_example(), "chapter_number": 4}
    body["structured_context"]["chapters"] = [{"number": 1, "content": "Once."}]
    status, error = post(client, "editor-review", body)
    assert status == 422 and error["param"] == "chapter_number"
    assert "chapters given: 1" in error["message"]


def test_both_or_neither_chapter_source_is_422(client):
    status, error = post(client, "modify-chapter", {**seed_example(), "user_request": "x"})
    assert status == 422 and "exactly one" in error["message"]


def test_duplicate_chapter_numbers_are_422(client):
    body = seed_example()
    body["structured_context"]["chapters"] = [{"number": 1, "content": "a"},
                                              {"number": 1, "content": "b"}]
    status, error = post(client, "generate-chapter", body)
    assert status == 422 and "unique" in error["message"]


def test_chat_must_end_with_a_user_message(client):
    status, error = post(client, "llm-chat", {"messages": [{"role": "assistant", "content": "hi"}]})
    assert status == 422 and "last message" in error["message"]


def test_context_that_cannot_fit_is_400_with_numbers(client):
    body = seed_example()
    body["structured_context"]["plot_elements"][0]["content"] = "word " * 9000
    status, error = post(client, "generate-chapter", body)
    assert status == 400
    assert error["code"] == "context_length_exceeded"
    assert error["details"]["needed_tokens"] > error["details"]["available_tokens"]


def test_preview_validates_the_inner_request(client):
    status, error = post(client, "context/preview",
                         {"operation": "editor-review", "request": {"chapter_number": "x"}})
    assert status == 422 and error["param"].startswith("request.")
    status, error = post(client, "context/preview", {"operation": "nope", "request": {}})
    assert status == 422 and error["param"] == "operation"


def test_unknown_route_and_method_use_the_envelope(client):
    assert client.get("/api/v1/nothing").json()["error"]["code"] == "not_found"
    assert client.get("/api/v1/generate-chapter").json()["error"]["code"] == "method_not_allowed"
