"""The GGUF export is exact: an adapter trained (a few steps, high learning rate) on a short
text lowers that text's loss in llama.cpp as much as in transformers, and it only does so
because lora_b of q_proj/k_proj is permuted back for llama.cpp's rope layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from app.finetune import export
from app.finetune.export import export_lora_gguf, permute_rope_rows

pytestmark = pytest.mark.model

TEXT = ("The quick brown fox jumps over the lazy dog near the riverbank at dawn, while "
        "Holmes watches from the window of Baker Street.")


def _llama_loss(base_gguf: Path, ids: list[int], lora: Path | None) -> float:
    """Mean negative log-likelihood (nats per token) of ``ids[1:]`` given their prefix, from
    llama.cpp's logits, with the adapter ``lora`` or without."""
    from llama_cpp import Llama

    llama = Llama(model_path=str(base_gguf), n_ctx=128, logits_all=True, verbose=False,
                  n_threads=1, **({"lora_path": str(lora)} if lora else {}))
    llama.eval(ids)
    scores = np.asarray(llama.scores[:len(ids)], dtype=np.float64)
    llama.close()
    top = scores.max(axis=1, keepdims=True)
    logprobs = scores - top - np.log(np.exp(scores - top).sum(axis=1, keepdims=True))
    return float(-np.mean([logprobs[i, ids[i + 1]] for i in range(len(ids) - 1)]))


@pytest.fixture(scope="module")
def trained(base_gguf, tokenizer, tmp_path_factory):
    """A q_proj + k_proj adapter overfitted to TEXT: (peft dir, token ids, transformers' loss
    with the adapter, without it)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    ids = tokenizer.tokenize(TEXT)
    model = AutoModelForCausalLM.from_pretrained(str(base_gguf.parent),
                                                 gguf_file=base_gguf.name, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                             target_modules=["q_proj", "k_proj"]))
    batch = torch.tensor([ids])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    for _ in range(8):
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    with torch.no_grad():
        tuned = model(input_ids=batch, labels=batch).loss.item()
        with model.disable_adapter():
            base = model(input_ids=batch, labels=batch).loss.item()
    out = tmp_path_factory.mktemp("qk-adapter")
    model.save_pretrained(str(out))
    return out, ids, tuned, base


def test_the_adapter_lowers_the_loss_in_llama_cpp_as_in_transformers(trained, base_gguf,
                                                                      tmp_path):
    peft_dir, ids, hf_tuned, hf_base = trained
    adapter = export_lora_gguf(peft_dir, base_gguf, tmp_path / "qk.gguf")
    base = _llama_loss(base_gguf, ids, None)
    tuned = _llama_loss(base_gguf, ids, adapter)
    assert hf_tuned < hf_base - 2.0  # the training did something large
    assert abs(base - hf_base) < 0.25  # Q4_1 in llama.cpp against its dequantized weights
    assert tuned < base - 2.0
    assert abs(tuned - hf_tuned) < 0.25


def test_without_the_rope_permutation_the_adapter_is_wrong(trained, base_gguf, tmp_path,
                                                          monkeypatch):
    """The check above fails for an export that forgets to permute q/k: it is a real test."""
    peft_dir, ids, hf_tuned, _ = trained
    monkeypatch.setattr(export, "permute_rope_rows", lambda rows, n_head: rows)
    wrong = export_lora_gguf(peft_dir, base_gguf, tmp_path / "unpermuted.gguf")
    assert _llama_loss(base_gguf, ids, wrong) > hf_tuned + 1.0


def test_the_permutation_inverts_transformers_unpermutation():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    rows = np.arange(9 * 64 * 3, dtype=np.float32).reshape(9 * 64, 3)
    unpermuted = LlamaTensorProcessor(config={})._reverse_permute_weights(rows, 9, 9)
    assert not np.array_equal(unpermuted, rows)
    assert np.array_equal(permute_rope_rows(unpermuted, 9), rows)
    kv = rows[:192]
    assert np.array_equal(permute_rope_rows(
        LlamaTensorProcessor(config={})._reverse_permute_weights(kv, 9, 3), 3), kv)
