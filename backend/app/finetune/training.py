"""A LoRA fine-tune of the embedded model on a dataset built by :mod:`app.finetune.dataset`.

The weights come from the served GGUF itself (transformers reads and dequantizes it with
``gguf_file=``), so nothing is downloaded; training uses transformers' ``Trainer`` with a
peft LoRA model, on a CUDA GPU when one is present and else on the CPU. Tokens are those of
the served model's own tokenizer (llama.cpp's, through ``GgufTokenizer``), so what is trained
is what the server later reads.

An adapter directory holds:

- ``checkpoints/checkpoint-<step>``: the Trainer's checkpoints every ``save_steps`` steps (the
  two newest kept); a run started again in the same directory resumes from the newest complete
  one (a checkpoint is complete once its ``trainer_state.json`` is written);
- ``peft/``: the final peft adapter (``adapter_config.json``, ``adapter_model.safetensors``);
- ``adapter.gguf``: the same adapter as a GGUF LoRA adapter (:mod:`app.finetune.export`);
- ``training.json``: the :class:`TrainingRecord`.

Two hard caps stop a run whatever its epochs ask: ``max_steps`` optimizer steps, and
``max_seconds`` of wall-clock time in this run (checked after each step; the run then saves a
checkpoint and stops, and running again continues from it).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from app.errors import DatasetTooSmall, InvalidRequest
from app.finetune.dataset import (
    TRAIN_FILE,
    VALIDATION_FILE,
    read_examples,
    read_report,
)
from app.finetune.export import export_lora_gguf, read_base_model
from app.finetune.record import ADAPTER_FILE, RECORD_FILE, TrainingRecord

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
PEFT_DIR = "peft"
#: Label of the tokens that carry no loss (the prompt, padding): PyTorch's cross-entropy
#: ``ignore_index`` default, which transformers' causal LM loss uses.
IGNORE_INDEX = -100
#: Token id written in padded positions; any id serves, since they are masked out of attention
#: and labelled IGNORE_INDEX.
PAD_ID = 0


@dataclass(frozen=True)
class Hyperparameters:
    """What a fine-tune runs with (defaults from ``FinetuneSettings``).

    ``lora_r`` (rank), ``lora_alpha`` (the update is scaled by alpha / r), ``lora_dropout``,
    ``target_modules`` (projection names), ``learning_rate`` (peak, AdamW with linear decay),
    ``epochs``, ``batch_size`` (examples per step), ``max_seq_len`` (tokens per example),
    ``max_steps`` and ``max_seconds`` (hard caps: optimizer steps, wall-clock seconds of this
    run), ``save_steps`` (steps between checkpoints), ``eval_examples`` (validation examples
    the final validation loss is computed on; 0: none), ``seed``.
    """

    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                       "up_proj", "down_proj")
    learning_rate: float = 2e-4
    epochs: float = 3.0
    batch_size: int = 1
    max_seq_len: int = 256
    max_steps: int = 200
    max_seconds: float = 1800.0
    save_steps: int = 25
    eval_examples: int = 16
    seed: int = 0


def encode_example(prompt_ids: Sequence[int], completion_ids: Sequence[int], max_seq_len: int
                   ) -> dict[str, list[int]]:
    """``input_ids``, ``labels`` and ``attention_mask`` of one example, at most
    ``max_seq_len`` tokens: the prompt keeps its last tokens (at least half the window when
    it is that long), the completion its first; prompt tokens are labelled
    :data:`IGNORE_INDEX`, so the loss is the completion's."""
    keep_prompt = min(len(prompt_ids), max(max_seq_len - len(completion_ids), max_seq_len // 2))
    prompt = list(prompt_ids[len(prompt_ids) - keep_prompt:])
    completion = list(completion_ids[:max_seq_len - len(prompt)])
    return {"input_ids": prompt + completion,
            "labels": [IGNORE_INDEX] * len(prompt) + completion,
            "attention_mask": [1] * (len(prompt) + len(completion))}


class PadCollator:
    """Pads a batch of :func:`encode_example` dicts on the right to its longest example:
    ``input_ids`` with ``pad_id``, ``labels`` with :data:`IGNORE_INDEX`, ``attention_mask``
    with 0. Returns tensors of shape ``(batch, longest)``."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        import torch

        longest = max(len(item["input_ids"]) for item in batch)
        fill = {"input_ids": self.pad_id, "labels": IGNORE_INDEX, "attention_mask": 0}
        return {key: torch.tensor([item[key] + [value] * (longest - len(item[key]))
                                   for item in batch]) for key, value in fill.items()}


class TimeLimit(TrainerCallback):
    """Once ``max_seconds`` (wall clock, from the start of training in this run) have passed
    at the end of a step, saves a checkpoint and stops training; ``fired`` says it did."""

    def __init__(self, max_seconds: float) -> None:
        self.max_seconds = max_seconds
        self.started = time.monotonic()
        self.fired = False

    def on_train_begin(self, args: TrainingArguments, state: TrainerState,
                       control: TrainerControl, **kwargs: Any) -> None:
        self.started = time.monotonic()

    def on_step_end(self, args: TrainingArguments, state: TrainerState,
                    control: TrainerControl, **kwargs: Any) -> TrainerControl:
        if time.monotonic() - self.started >= self.max_seconds:
            self.fired = True
            control.should_save = True
            control.should_training_stop = True
        return control


def last_complete_checkpoint(checkpoints: Path) -> Path | None:
    """The newest ``checkpoint-<step>`` under ``checkpoints`` whose ``trainer_state.json`` was
    written (a run killed while saving leaves an incomplete one, which is skipped)."""
    if not checkpoints.is_dir():
        return None
    found = [(int(p.name.rpartition("-")[2]), p) for p in checkpoints.glob("checkpoint-*")
             if p.name.rpartition("-")[2].isdigit() and (p / "trainer_state.json").is_file()]
    return max(found)[1] if found else None


def _drop_gguf_quantizer(model: Any) -> None:
    """Mark a model that transformers read from a GGUF as the plain float model it is.

    transformers (5.x) attaches its GGUF quantizer to such a model even when it dequantized
    every weight (which it does without a GGUF matmul kernel, as here), and the Trainer then
    refuses to train it. When every parameter is floating point, the quantizer's own
    ``remove_quantization_config`` takes the mark off.

    Raises:
        InvalidRequest: some weight is still in GGUF blocks (not trainable).
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return
    if not all(p.dtype.is_floating_point for p in model.parameters()):
        raise InvalidRequest("transformers kept some of the GGUF's weights quantized; they "
                             "cannot be fine-tuned.")
    quantizer.remove_quantization_config(model)


def _encoded(records: list[dict[str, Any]], tokenize: Any, max_seq_len: int
             ) -> list[dict[str, list[int]]]:
    return [encode_example(tokenize(str(r["prompt"])), tokenize(str(r["completion"])),
                           max_seq_len) for r in records]


def finetune(dataset_dir: Path, adapter_dir: Path, *, base_gguf: Path,
             hyperparameters: Hyperparameters, progress: bool = True,
             threads: int | None = None) -> TrainingRecord:
    """Train a LoRA adapter of the model in ``base_gguf`` on the dataset in ``dataset_dir``
    into ``adapter_dir``, resuming from its newest complete checkpoint when there is one;
    export it as ``adapter.gguf`` and write ``training.json``. Returns the record.

    ``threads`` sets torch's CPU threads (default: torch's own). ``progress`` shows the
    Trainer's progress bar.

    Raises:
        InvalidRequest: ``dataset_dir`` holds no dataset.
        DatasetTooSmall: its training split has no example.
        ModelUnavailable: ``base_gguf`` is missing or not GGUF.
        InvalidAdapter: the base model's architecture cannot be exported.
    """
    started = time.monotonic()
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer

    from app.llm.llama import GgufTokenizer

    hp = hyperparameters
    report = read_report(dataset_dir)
    train_records = read_examples(dataset_dir / TRAIN_FILE)
    if not train_records:
        raise DatasetTooSmall(f"The training split of {dataset_dir} has no example.")
    validation_records = read_examples(dataset_dir / VALIDATION_FILE)[:hp.eval_examples]
    base = read_base_model(base_gguf)
    if threads:
        torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    tokenizer = GgufTokenizer.load(base_gguf, "the base model")
    train_set = _encoded(train_records, tokenizer.tokenize, hp.max_seq_len)
    eval_set = _encoded(validation_records, tokenizer.tokenize, hp.max_seq_len)

    model = AutoModelForCausalLM.from_pretrained(str(base_gguf.parent), gguf_file=base_gguf.name,
                                                 dtype=torch.float32)
    _drop_gguf_quantizer(model)
    peft_model = get_peft_model(model, LoraConfig(
        r=hp.lora_r, lora_alpha=hp.lora_alpha, lora_dropout=hp.lora_dropout,
        target_modules=list(hp.target_modules), bias="none", task_type="CAUSAL_LM"))
    steps_per_epoch = math.ceil(len(train_set) / hp.batch_size)
    planned = max(1, min(hp.max_steps, math.ceil(steps_per_epoch * hp.epochs)))
    checkpoints = adapter_dir / CHECKPOINTS_DIR
    resume = last_complete_checkpoint(checkpoints)
    args = TrainingArguments(
        output_dir=str(checkpoints), per_device_train_batch_size=hp.batch_size,
        per_device_eval_batch_size=hp.batch_size, learning_rate=hp.learning_rate,
        max_steps=planned, lr_scheduler_type="linear", save_strategy="steps",
        save_steps=hp.save_steps, save_total_limit=2, logging_steps=1, seed=hp.seed,
        report_to="none", use_cpu=device == "cpu", disable_tqdm=not progress,
        remove_unused_columns=False, dataloader_num_workers=0,
    )
    limit = TimeLimit(hp.max_seconds)
    trainer = Trainer(model=peft_model, args=args, train_dataset=train_set,
                      eval_dataset=eval_set or None,
                      data_collator=PadCollator(PAD_ID), callbacks=[limit])
    loop_started = time.monotonic()
    output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    train_seconds = time.monotonic() - loop_started
    validation_loss = trainer.evaluate()["eval_loss"] if eval_set else None

    peft_dir = adapter_dir / PEFT_DIR
    peft_model.save_pretrained(str(peft_dir))
    export_lora_gguf(peft_dir, base_gguf, adapter_dir / ADAPTER_FILE)
    losses = [float(e["loss"]) for e in trainer.state.log_history if "loss" in e]
    resumed_from = int(resume.name.rpartition("-")[2]) if resume else None
    steps_this_run = trainer.state.global_step - (resumed_from or 0)
    record = TrainingRecord(
        base_model=base.name, base_model_file=base.file, base_model_sha256=base.sha256,
        base_model_architecture=base.architecture, dataset_dir=str(dataset_dir),
        dataset=report, hyperparameters=asdict(hp), steps=trainer.state.global_step,
        planned_steps=planned, resumed_from_step=resumed_from,
        stopped_by="max_seconds" if limit.fired else "plan",
        train_examples=len(train_set), train_loss=float(output.training_loss),
        last_train_loss=losses[-1] if losses else None,
        validation_loss=float(validation_loss) if validation_loss is not None else None,
        validation_examples=len(eval_set), seconds=time.monotonic() - started,
        train_seconds=train_seconds,
        seconds_per_step=train_seconds / steps_this_run if steps_this_run > 0 else None,
        device=device,
        versions={name: version(name) for name in ("torch", "transformers", "peft")},
        adapter_gguf=ADAPTER_FILE,
    )
    (adapter_dir / RECORD_FILE).write_text(record.model_dump_json(indent=2) + "\n",
                                           encoding="utf-8")
    logger.info("adapter %s: %d steps, train loss %.3f, %s", adapter_dir, record.steps,
                record.train_loss or math.nan, device)
    return record
