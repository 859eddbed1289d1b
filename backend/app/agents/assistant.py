"""The assistant: a chat about the story with the author."""

from __future__ import annotations

from typing import Any

from app.agents.spec import AgentResult, AgentSpec, TaskInput
from app.llm.protocol import ChatMessage
from app.schemas.requests import LlmChatRequest
from app.schemas.responses import LlmChatResponse

ROLE = "You are the assistant."


def llm_chat_task(request: LlmChatRequest) -> TaskInput:
    *history, last = request.messages
    return TaskInput(
        last.content,
        history=tuple(ChatMessage(role=turn.role, content=turn.content) for turn in history),
    )


def _reply(result: AgentResult) -> dict[str, Any]:
    return {"message": {"role": "assistant", "content": result.text}}


SPECS = [
    AgentSpec("llm-chat", "assistant", ROLE, llm_chat_task, LlmChatRequest, LlmChatResponse,
              _reply, summary="Assistant agent: llm chat", prose=False),
]
