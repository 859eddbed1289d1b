"""Responses of ``GET /api/v1/models``: the base model and the LoRA adapters served beside it."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from app.finetune.record import TrainingRecord


class BaseModelInfo(BaseModel):
    """The served model itself (a request's ``model: "base"``)."""

    id: Literal["base"] = "base"
    name: str = Field(description="The model's name (its GGUF file's stem, or the remote "
                      "server's model id); answers name it as their `model`.")
    sha256: str | None = Field(description="SHA-256 (hex) of the GGUF file; null for a "
                               "remote server.")
    n_ctx: int = Field(description="Context window in tokens (prompt plus completion).")
    runtime: str | None = Field(default=None, description="What runs it, e.g. "
                                "llama-cpp-python 0.3.36.")


class AdapterInfo(BaseModel):
    """A registered LoRA adapter (a request's ``model: "<id>"``)."""

    id: str = Field(description="The adapter's registry name, what a request's `model` "
                    "takes.")
    name: str = Field(description="What answers generated with it name as their `model`: "
                      "the base model's name, `+`, the adapter's.")
    sha256: str = Field(description="SHA-256 (hex) of its GGUF LoRA adapter file.")
    size_bytes: int
    lora_alpha: float
    base_model: str = Field(description="The base model it was made for, as it records it.")
    base_model_sha256: str
    created_at: datetime = Field(description="When it was registered (UTC).")
    training: TrainingRecord | None = Field(
        description="Its training record (hyperparameters, steps, losses, the dataset's "
        "report, timings); null when it was registered from a bare GGUF file.")


class ModelsResponse(BaseModel):
    """What a request's ``model`` may name: ``base``, then each adapter."""

    base: BaseModelInfo
    adapters: list[AdapterInfo] = Field(description="The registered adapters, by id; empty "
                                        "when the model runs on a remote server (which "
                                        "serves only the base).")
