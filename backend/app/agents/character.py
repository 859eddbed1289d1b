"""The character agent: a character's reaction, a new character sheet, a new biography."""

from __future__ import annotations

from app.agents.outputs import CharacterDetails, CharacterReaction
from app.agents.references import character_name
from app.agents.spec import AgentSpec, TaskInput, json_answer, text_answer
from app.schemas.requests import (
    CharacterDetailsRequest,
    CharacterFeedbackRequest,
    RegenerateBioRequest,
)
from app.schemas.responses import (
    CharacterDetailsResponse,
    CharacterFeedbackResponse,
    RegenerateBioResponse,
)

ROLE = "You are the character agent."
#: The character agent's defaults, as in the original Writer Assistant.
TEMPERATURE = 0.8
MAX_TOKENS = 800


def character_feedback_task(request: CharacterFeedbackRequest) -> TaskInput:
    name = character_name(request.structured_context, request.character_name)
    return TaskInput(
        f"Be {name}. React to this plot point as {name}: {request.plot_point}\n"
        "Give short lists of actions, dialog lines, physical sensations, emotions and "
        "internal monologue.",
        summary={"character_name": name},
    )


def character_details_task(request: CharacterDetailsRequest) -> TaskInput:
    notes = f" Notes from the author: {request.basic_bio}" if request.basic_bio else ""
    return TaskInput(
        f"Create a character sheet for {request.character_name} that fits this story's world."
        f"{notes}\nGive name, age, appearance, personality, background, motivations and fears, "
        "each brief.",
        summary={"character_name": request.character_name},
    )


def regenerate_bio_task(request: RegenerateBioRequest) -> TaskInput:
    name = character_name(request.structured_context, request.character_name)
    return TaskInput(
        f"Write a new biography of {name} in one or two paragraphs, consistent with their "
        "character sheet and the story so far.",
        summary={"character_name": name},
    )


SPECS = [
    AgentSpec("character-feedback", "character", ROLE, character_feedback_task,
              CharacterFeedbackRequest, CharacterFeedbackResponse, json_answer(),
              summary="Character agent: character feedback", max_tokens=MAX_TOKENS,
              temperature=TEMPERATURE,
              output_model=CharacterReaction, max_tokens_limit=2048),
    AgentSpec("generate-character-details", "character", ROLE, character_details_task,
              CharacterDetailsRequest, CharacterDetailsResponse, json_answer("details"),
              summary="Character agent: generate character details", max_tokens=MAX_TOKENS,
              temperature=TEMPERATURE, output_model=CharacterDetails, max_tokens_limit=2048),
    AgentSpec("regenerate-bio", "character", ROLE, regenerate_bio_task,
              RegenerateBioRequest, RegenerateBioResponse, text_answer("bio"),
              summary="Character agent: regenerate bio", max_tokens=MAX_TOKENS,
              temperature=TEMPERATURE, max_tokens_limit=1024),
]
