"""LoRA adapters for tests, made in a second without training.

:func:`make_adapter` writes a peft adapter (``adapter_config.json`` and
``adapter_model.safetensors``) of random A and B matrices and exports it with the real
exporter to a GGUF LoRA adapter for the base model; ``scale`` sets how far it moves the
model (0.2 changes SmolLM2-135M's greedy output within a few tokens).
:func:`metadata_adapter` writes a GGUF LoRA adapter of metadata only, naming any base model
(what registering reads). :func:`training_record` is a training record to put beside one.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import save_file

from app.finetune.dataset import DatasetReport, SplitReport
from app.finetune.export import BASE_ARCHITECTURE_KEY, BASE_SHA256_KEY
from app.finetune.record import ADAPTER_FILE, RECORD_FILE, TrainingRecord

#: SmolLM2-135M: 30 blocks, hidden size 576, k/v projections of 192 (3 heads of 64).
_BLOCKS, _HIDDEN, _KV = 30, 576, 192


def make_adapter(out: Path, base_gguf: Path, *, scale: float = 0.2, seed: int = 0,
                 rank: int = 4) -> Path:
    """A GGUF LoRA adapter at ``out`` of q_proj and v_proj of every block of the embedded
    model, random (``seed``) with entries of standard deviation ``scale``."""
    from app.finetune.export import export_lora_gguf

    rng = np.random.default_rng(seed)
    peft = out.parent / f"{out.stem}-peft"
    peft.mkdir(parents=True, exist_ok=True)
    weights = {}
    for block in range(_BLOCKS):
        for module, rows in (("q_proj", _HIDDEN), ("v_proj", _KV)):
            name = f"base_model.model.model.layers.{block}.self_attn.{module}"
            weights[f"{name}.lora_A.weight"] = (
                rng.standard_normal((rank, _HIDDEN)) * scale).astype(np.float32)
            weights[f"{name}.lora_B.weight"] = (
                rng.standard_normal((rows, rank)) * scale).astype(np.float32)
    save_file(weights, str(peft / "adapter_model.safetensors"))
    (peft / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank,
        "target_modules": ["q_proj", "v_proj"]}), encoding="utf-8")
    return export_lora_gguf(peft, base_gguf, out)


def metadata_adapter(out: Path, base_sha256: str = "0" * 64) -> Path:
    """A GGUF LoRA adapter (metadata only, no tensors) made for a base model of SHA-256
    ``base_sha256``: the default names no real model; the served base's passes the checks of
    registering (which read only the metadata), not llama.cpp's loading."""
    writer = gguf.GGUFWriter(out, "llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 8.0)
    writer.add_base_model_count(1)
    writer.add_base_model_name(0, "Another Model")
    writer.add_string(BASE_SHA256_KEY, base_sha256)
    writer.add_string(BASE_ARCHITECTURE_KEY, "llama")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def training_record(base_gguf: Path, base_sha256: str) -> TrainingRecord:
    """A plausible training record of a two-step run."""
    split = SplitReport(files=["a.txt"], units=["a.txt"], examples=4, continuation=4,
                        scene_from_summary=0, prompt_tokens=100, completion_tokens=100,
                        text_tokens=200)
    dataset = DatasetReport(source="a.txt b.txt", tokenizer=base_gguf.stem, split_by="file",
                            seed=0, validation_fraction=0.5, passage_tokens=64,
                            corpus_tokens=400, skipped_front_matter_chars=0,
                            scene_from_summary_pairs=0, train=split, validation=split)
    return TrainingRecord(
        base_model="SmolLM2 135M", base_model_file=base_gguf.name,
        base_model_sha256=base_sha256, base_model_architecture="llama",
        dataset_dir="/tmp/dataset", dataset=dataset,
        hyperparameters={"lora_r": 4, "lora_alpha": 8, "learning_rate": 2e-4},
        steps=2, planned_steps=2, resumed_from_step=None, stopped_by="plan",
        train_examples=4, train_loss=3.25, last_train_loss=3.0, validation_loss=3.5,
        validation_examples=2, seconds=10.0, train_seconds=8.0, seconds_per_step=4.0,
        device="cpu", versions={"torch": "test"}, adapter_gguf=ADAPTER_FILE)


def finetune_dir(out: Path, base_gguf: Path, base_sha256: str, *, tensors: bool = True) -> Path:
    """A directory laid out as a fine-tune writes it: adapter.gguf (a real one, or
    metadata only without ``tensors``) and training.json."""
    out.mkdir(parents=True, exist_ok=True)
    if tensors:
        make_adapter(out / ADAPTER_FILE, base_gguf)
    else:
        metadata_adapter(out / ADAPTER_FILE, base_sha256)
    record = training_record(base_gguf, base_sha256)
    (out / RECORD_FILE).write_text(record.model_dump_json(indent=2), encoding="utf-8")
    return out
