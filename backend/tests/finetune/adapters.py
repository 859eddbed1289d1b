"""Tiny LoRA adapters for the tests: a peft adapter directory (``adapter_config.json`` and
``adapter_model.safetensors``, as ``PeftModel.save_pretrained`` writes them) made with numpy,
exported to GGUF by the fine-tune's own exporter (:func:`app.finetune.export.export_lora_gguf`),
so the evaluation loads exactly what a fine-tune produces.

Shapes are peft's: ``lora_A.weight`` ``(rank, in_features)``, ``lora_B.weight``
``(out_features, rank)``, read from the base GGUF's tensor (ggml ``ne = [in, out]``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import save_file

from app.finetune.export import export_lora_gguf
from app.llm.llama import default_model_path

#: Modules adapted by default: the first block's query and value projections.
TARGETS = ("model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj")


def write_lora(path: Path, *, scale_b: float, rank: int = 4, alpha: float = 8.0,
               targets: Sequence[str] = TARGETS, seed: int = 0) -> Path:
    """Write a rank-``rank`` LoRA adapter of ``targets`` for the embedded model as the GGUF
    ``path`` (its peft form beside it, in ``path.stem``-peft): ``lora_A`` random normal,
    ``lora_B`` random normal times ``scale_b`` (0: the adapter changes nothing). Returns
    ``path``."""
    base = default_model_path()
    reader = gguf.GGUFReader(str(base))
    shapes = {t.name: [int(n) for n in t.shape] for t in reader.tensors}
    blocks = int(reader.get_field("llama.block_count").contents())
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, blocks)
    rng = np.random.default_rng(seed)
    weights = {}
    for module in targets:
        n_in, n_out = shapes[f"{names.get_name(module)}.weight"]
        prefix = f"base_model.model.{module}"
        weights[f"{prefix}.lora_A.weight"] = rng.normal(0, 0.5, (rank, n_in)).astype(np.float32)
        weights[f"{prefix}.lora_B.weight"] = (rng.normal(0, 0.5, (n_out, rank))
                                              * scale_b).astype(np.float32)
    peft_dir = path.with_name(f"{path.stem}-peft")
    peft_dir.mkdir(parents=True, exist_ok=True)
    (peft_dir / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": rank, "lora_alpha": alpha,
         "target_modules": sorted({m.rsplit(".", 1)[1] for m in targets})}))
    save_file(weights, str(peft_dir / "adapter_model.safetensors"))
    return export_lora_gguf(peft_dir, base, path)
