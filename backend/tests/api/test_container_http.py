"""A request in the original Writer Assistant's shape, through the HTTP routes on the fake
model: accepted, and its scopes, phases and tags used."""

import json

import pytest
from fastapi.testclient import TestClient

from app.llm.fake import FakeGenerator
from app.main import create_app
from tests.context.test_container import ORIGINAL

CHARACTER_JSON = json.dumps({"actions": ["steps back"], "dialog": ["Who's there?"],
                             "physicalSensations": ["cold hands"], "emotions": ["fear"],
                             "internalMonologue": ["Stay calm."]})
CLIPPED = "Speak in short, clipped sentences."
TWIST = "The mentor is the thief."


@pytest.fixture
def app_and_model(settings):
    generator = FakeGenerator(replies=[CHARACTER_JSON])
    with TestClient(create_app(settings, generator=generator)) as client:
        yield client, generator


def original(**extra) -> dict:
    """A request body with every field of the original's container."""
    body = {"structured_context": json.loads(json.dumps(ORIGINAL)),
            "context_processing_config": {"exclude_tags": ["spoiler"]}}
    body["structured_context"]["plot_elements"].append(
        {"type": "foreshadowing", "content": "Reviewers: check the locket clue.",
         "phases": ["review"], "agents": ["editor", "rater"]})
    return {**body, **extra}


def prompt_of(generator: FakeGenerator) -> str:
    messages, _params = generator.calls[-1]
    return "\n".join(m.content for m in messages)


def test_the_original_shape_is_accepted_and_used_by_the_character_agent(app_and_model):
    client, generator = app_and_model
    response = client.post("/api/v1/character-feedback",
                           json=original(character_name="Aria", plot_point="A wolf howls."))
    assert response.status_code == 200, response.text
    prompt = prompt_of(generator)
    assert CLIPPED in prompt  # the instruction scoped to Aria reaches Aria's agent
    assert TWIST not in prompt  # tag excluded
    assert "Reviewers: check the locket clue." not in prompt  # for the editor, in review
    assert "Current state: emotion: determined; location: forest_edge" in prompt
    elements = {e["id"]: e for e in response.json()["context_metadata"]["elements"]}
    assert elements["system_instructions[1]"]["fate"] == "kept"
    assert elements["plot_elements[1]"]["fate"] == "filtered"
    assert "tag excluded (spoiler" in elements["plot_elements[1]"]["reason"]
    assert elements["plot_elements[9]"]["fate"] == "filtered"
    assert "agent (it is for the editor, rater agents" in elements["plot_elements[9]"]["reason"]


def test_other_agents_and_characters_do_not_get_the_character_instruction(app_and_model):
    client, generator = app_and_model
    generator.replies = ["The forest was quiet."]
    response = client.post("/api/v1/generate-chapter", json=original())
    assert response.status_code == 200, response.text
    prompt = prompt_of(generator)
    assert CLIPPED not in prompt and TWIST not in prompt
    assert "Keep voices consistent." in prompt  # global
    elements = {e["id"]: e for e in response.json()["context_metadata"]["elements"]}
    assert elements["system_instructions[1]"]["fate"] == "filtered"
    assert "character scope" in elements["system_instructions[1]"]["reason"]

    generator.replies = ["Bran grew up by the docks."]
    response = client.post("/api/v1/regenerate-bio", json=original(character_name="bran"))
    assert response.status_code == 200, response.text
    assert CLIPPED not in prompt_of(generator)
    elements = {e["id"]: e for e in response.json()["context_metadata"]["elements"]}
    assert "this agent speaks as Bran" in elements["system_instructions[1]"]["reason"]


def test_the_editor_in_review_gets_its_own_elements_after_the_shared_block(app_and_model):
    client, _generator = app_and_model
    request = original(chapter_to_review="Aria walked into the trees.")
    response = client.post("/api/v1/context/preview",
                           json={"operation": "editor-review", "request": request})
    assert response.status_code == 200, response.text
    body = response.json()
    system, user = body["messages"][0]["content"], body["messages"][-1]["content"]
    assert "Reviewers: check the locket clue." in user
    assert "Reviewers: check the locket clue." not in system
    elements = {e["id"]: e for e in body["context_metadata"]["elements"]}
    assert "it is for review" in elements["plot_elements[9]"]["reason"]
    # a drafting request of the editor's leaves it out
    request["context_processing_config"]["phase"] = "drafting"
    response = client.post("/api/v1/context/preview",
                           json={"operation": "editor-review", "request": request})
    elements = {e["id"]: e for e in response.json()["context_metadata"]["elements"]}
    assert elements["plot_elements[9]"]["fate"] == "filtered"
    assert "phase (it is for review; this request is drafting)" in (
        elements["plot_elements[9]"]["reason"])


@pytest.mark.parametrize(("body", "param", "message"), [
    ({"structured_context": {"plot_elemnts": []}}, "structured_context.plot_elemnts",
     "unknown field plot_elemnts; did you mean plot_elements?"),
    ({"context_processing_config": {"exclude_tag": ["x"]}},
     "context_processing_config.exclude_tag",
     "unknown field exclude_tag; did you mean exclude_tags?"),
    ({"plot_elements": []}, "plot_elements",
     "unknown field plot_elements here; it is a field of structured_context"),
])
def test_a_misspelt_field_is_a_422_naming_the_nearest_known_name(app_and_model, body, param,
                                                                  message):
    client, _generator = app_and_model
    response = client.post("/api/v1/generate-chapter", json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and error["param"] == param
    assert message in error["message"]
    assert error["details"]["errors"][0]["type"] == "extra_forbidden"
