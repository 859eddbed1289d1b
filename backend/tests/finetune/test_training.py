"""A few-step LoRA fine-tune of the embedded model, end to end through the CLI: the record,
the checkpoints, the GGUF adapter that llama.cpp loads and that refuses another base model;
and a run killed with SIGKILL resumes from its last checkpoint."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gguf
import pytest
from typer.testing import CliRunner

from app import cli
from app.errors import AdapterMismatch, DatasetTooSmall, InvalidAdapter
from app.finetune.export import BASE_SHA256_KEY, check_adapter, read_adapter
from app.finetune.record import read_record
from app.finetune.training import IGNORE_INDEX, encode_example, last_complete_checkpoint
from app.llm.llama import file_sha256

pytestmark = pytest.mark.model

BACKEND = Path(__file__).resolve().parents[2]
#: Few and short steps: the pipeline, not the model's quality.
FEW_STEPS = ["--max-steps", "3", "--max-seq-len", "32", "--eval-examples", "2", "--threads",
             "1", "--no-progress"]


def _finetune(*args: str):
    return CliRunner().invoke(cli.app, ["finetune", *args])


@pytest.fixture(scope="module")
def adapter(sherlock_dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("adapter")
    result = _finetune("--dataset", str(sherlock_dataset[0]), "--out", str(out), "--save-steps",
                       "2", *FEW_STEPS)
    assert result.exit_code == 0, result.output
    assert "3 steps on cpu (plan)" in result.output
    return out


def test_a_few_step_fine_tune_writes_its_record(adapter, sherlock_dataset, base_gguf):
    record = read_record(adapter)
    assert record.steps == record.planned_steps == 3 and record.resumed_from_step is None
    assert record.stopped_by == "plan" and record.device == "cpu"
    assert record.base_model.lower().startswith("smollm2 135m")  # the GGUF's general.name
    assert record.base_model_file == base_gguf.name
    assert record.base_model_sha256 == file_sha256(base_gguf)
    assert record.dataset == sherlock_dataset[1]
    hp = record.hyperparameters
    assert (hp["lora_r"], hp["lora_alpha"], hp["learning_rate"], hp["epochs"]) == (16, 32, 2e-4,
                                                                                 3.0)
    assert set(hp["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                         "up_proj", "down_proj"}
    assert record.train_loss is not None and 0.5 < record.train_loss < 10
    assert record.validation_loss is not None and math.isfinite(record.validation_loss)
    assert record.validation_examples == 2 and record.train_examples > 100
    assert record.seconds_per_step is not None and record.seconds > record.train_seconds > 0
    # checkpoints every 2 steps and at the end; the peft adapter and its GGUF form
    assert last_complete_checkpoint(adapter / "checkpoints") == adapter / "checkpoints" / \
        "checkpoint-3"
    assert (adapter / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file()
    assert (adapter / "peft" / "adapter_model.safetensors").is_file()
    config = json.loads((adapter / "peft" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (16, 32)


def test_the_adapter_is_a_gguf_lora_for_this_base(adapter, base_gguf):
    path = adapter / "adapter.gguf"
    info = check_adapter(path, base_gguf)
    assert (info.alpha, info.architecture) == (32.0, "llama")
    reader = gguf.GGUFReader(path)
    names = {t.name for t in reader.tensors}
    # 30 blocks x 7 projections x (lora_a, lora_b)
    assert len(names) == 30 * 7 * 2
    q_a = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight.lora_a")
    k_b = next(t for t in reader.tensors if t.name == "blk.0.attn_k.weight.lora_b")
    assert list(q_a.shape) == [576, 16]  # GGUF order: ne[0] = in_features, ne[1] = rank
    assert list(k_b.shape) == [16, 192]  # ne[0] = rank, ne[1] = out_features (3 kv heads x 64)
    from llama_cpp import Llama

    llama = Llama(model_path=str(base_gguf), lora_path=str(path), n_ctx=64, verbose=False,
                  n_threads=1)
    assert llama.tokenize(b"Holmes")  # loaded: llama.cpp checked every tensor against the base
    llama.close()


def _other_base(path: Path) -> Path:
    """A GGUF model file of the same architecture but another identity (and so hash)."""
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("Some Other Model")
    writer.add_block_count(30)
    writer.add_head_count(9)
    writer.add_head_count_kv(3)
    import numpy as np

    writer.add_tensor("token_embd.weight", np.zeros((4, 576), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_an_adapter_for_another_base_model_is_refused(adapter, tmp_path):
    with pytest.raises(AdapterMismatch) as raised:
        check_adapter(adapter / "adapter.gguf", _other_base(tmp_path / "other.gguf"))
    assert "another base model" in raised.value.message
    assert raised.value.details["adapter_base_sha256"] == read_adapter(
        adapter / "adapter.gguf").base_sha256
    assert raised.value.code == "adapter_mismatch"


def test_an_adapter_that_records_another_base_is_refused(adapter, base_gguf, tmp_path):
    """An adapter GGUF written for another base (its recorded hash differs) against ours."""
    original = gguf.GGUFReader(adapter / "adapter.gguf")
    writer = gguf.GGUFWriter(tmp_path / "foreign.gguf", "llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 32.0)
    writer.add_string(BASE_SHA256_KEY, "0" * 64)
    for tensor in original.tensors[:2]:
        writer.add_tensor(tensor.name, tensor.data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(AdapterMismatch):
        check_adapter(tmp_path / "foreign.gguf", base_gguf)
    with pytest.raises(InvalidAdapter):  # the base model itself is no adapter
        check_adapter(base_gguf, base_gguf)


def test_finetune_without_a_dataset_is_exit_code_2(tmp_path):
    result = _finetune("--dataset", str(tmp_path / "none"), "--out", str(tmp_path / "a"),
                       *FEW_STEPS)
    assert result.exit_code == 2 and "no dataset" in result.output


def test_finetune_with_an_empty_training_split_is_refused(sherlock_dataset, tmp_path):
    dataset = tmp_path / "ds"
    dataset.mkdir()
    (dataset / "report.json").write_text((sherlock_dataset[0] / "report.json").read_text())
    (dataset / "train.jsonl").write_text("")
    (dataset / "validation.jsonl").write_text("")
    result = _finetune("--dataset", str(dataset), "--out", str(tmp_path / "a"), *FEW_STEPS)
    assert result.exit_code == 2 and DatasetTooSmall.code in result.output


def test_examples_train_on_the_completion_only():
    encoded = encode_example(list(range(100, 140)), [7, 8, 9], 16)
    assert len(encoded["input_ids"]) == 16
    assert encoded["input_ids"][-3:] == [7, 8, 9] and encoded["input_ids"][0] == 127
    assert encoded["labels"] == [IGNORE_INDEX] * 13 + [7, 8, 9]
    long = encode_example([1] * 40, list(range(40)), 16)
    assert long["labels"].count(IGNORE_INDEX) == 8 and long["labels"][8:] == list(range(8))


def test_a_killed_run_resumes_from_its_last_checkpoint(sherlock_dataset, tmp_path):
    out = tmp_path / "adapter"
    args = ["finetune", "--dataset", str(sherlock_dataset[0]), "--out", str(out),
            "--save-steps", "2", "--max-steps", "8", "--max-seq-len", "32", "--eval-examples",
            "0", "--threads", "1", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(BACKEND), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-c", "from app.cli import app; app()", *args], cwd=tmp_path, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while last_complete_checkpoint(out / "checkpoints") is None:
            assert process.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    saved = last_complete_checkpoint(out / "checkpoints")
    assert saved is not None
    step = int(saved.name.rpartition("-")[2])
    assert step < 8 and not (out / "training.json").exists()

    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    record = read_record(out)
    assert record.resumed_from_step == step
    assert record.steps == 8
    assert f"resumed from step {step}" in result.output


def test_the_time_cap_saves_and_stops_after_a_step():
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from app.finetune.training import TimeLimit

    args = TrainingArguments(output_dir="unused", report_to="none", use_cpu=True)
    spent, fresh = TimeLimit(0.0), TimeLimit(3600.0)
    for limit in (spent, fresh):
        limit.on_train_begin(args, TrainerState(), TrainerControl())
    stopped = spent.on_step_end(args, TrainerState(), TrainerControl())
    assert stopped.should_save and stopped.should_training_stop and spent.fired
    going = fresh.on_step_end(args, TrainerState(), TrainerControl())
    assert not going.should_save and not going.should_training_stop and not fresh.fired
