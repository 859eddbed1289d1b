"""The training record of an adapter (``training.json``): what it was trained from and how.

Kept apart from :mod:`app.finetune.training` (which imports transformers and torch) so the
server can read and serve records (``GET /api/v1/models``) without loading either.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from app.finetune.dataset import DatasetReport

#: File name of the GGUF LoRA adapter in an adapter directory.
ADAPTER_FILE = "adapter.gguf"
#: File name of the training record in an adapter directory.
RECORD_FILE = "training.json"


class TrainingRecord(BaseModel):
    """What an adapter was trained from and how (``training.json`` beside the adapter)."""

    base_model: str = Field(description="The base GGUF's general.name.")
    base_model_file: str
    base_model_sha256: str = Field(description="SHA-256 (hex) of the base GGUF file.")
    base_model_architecture: str
    dataset_dir: str
    dataset: DatasetReport
    hyperparameters: dict[str, Any]
    steps: int = Field(description="Optimizer steps done, over every run of this adapter.")
    planned_steps: int = Field(description="min(max_steps, the steps the epochs ask for).")
    resumed_from_step: int | None = Field(
        description="The checkpoint's step this run resumed from; null for a fresh run.")
    stopped_by: Literal["plan", "max_seconds"] = Field(
        description="'plan': the planned steps were done; 'max_seconds': the time cap.")
    train_examples: int
    train_loss: float | None = Field(description="Mean training loss (nats per token) of "
                                     "this run's steps.")
    last_train_loss: float | None = Field(description="Loss of the last logged step.")
    validation_loss: float | None = Field(
        description="Mean loss (nats per completion token) on the first eval_examples "
        "validation examples; null when eval_examples is 0.")
    validation_examples: int
    seconds: float = Field(description="Wall-clock seconds of this run (loading included).")
    train_seconds: float = Field(description="Seconds of this run's training loop.")
    seconds_per_step: float | None
    device: str = Field(description="'cuda' or 'cpu'.")
    versions: dict[str, str] = Field(description="torch, transformers and peft versions.")
    adapter_gguf: str = Field(description="File name of the GGUF LoRA adapter.")


def read_record(adapter_dir: Path) -> TrainingRecord:
    """The ``training.json`` of the adapter in ``adapter_dir``.

    Raises:
        FileNotFoundError: no record there.
        pydantic.ValidationError, ValueError: it is not a training record.
    """
    return TrainingRecord.model_validate(
        json.loads((adapter_dir / RECORD_FILE).read_text(encoding="utf-8")))
