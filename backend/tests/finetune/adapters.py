"""Tiny GGUF LoRA adapters for the tests, written with the ``gguf`` package in the layout
llama.cpp's ``convert_lora_to_gguf.py`` writes (``general.type = adapter``,
``adapter.type = lora``, ``adapter.lora.alpha``, and ``<tensor>.lora_a`` / ``<tensor>.lora_b``
beside each adapted base tensor).

Shapes (ggml order, as llama.cpp's ``llama-adapter.cpp`` checks them): for a base tensor of
``ne = [n_in, n_out]``, ``lora_a`` has ``ne = [n_in, r]`` and ``lora_b`` ``ne = [r, n_out]``;
numpy arrays give them reversed, ``(r, n_in)`` and ``(n_out, r)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import gguf
import numpy as np

from app.llm.llama import default_model_path

#: Base tensors adapted by default: the first block's query and value projections.
TARGETS = ("blk.0.attn_q.weight", "blk.0.attn_v.weight")


def write_lora(path: Path, *, scale_b: float, rank: int = 4, alpha: float = 8.0,
               targets: Sequence[str] = TARGETS, base: Path | None = None,
               seed: int = 0) -> Path:
    """Write a rank-``rank`` LoRA adapter for ``targets`` of ``base`` (default: the embedded
    model) at ``path``: ``lora_a`` random normal, ``lora_b`` random normal times ``scale_b``
    (0: the adapter changes nothing). Returns ``path``."""
    reader = gguf.GGUFReader(str(base or default_model_path()))
    shapes = {t.name: [int(n) for n in t.shape] for t in reader.tensors}
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for name in targets:
        n_in, n_out = shapes[name]
        writer.add_tensor(f"{name}.lora_a",
                          rng.normal(0, 0.5, (rank, n_in)).astype(np.float32))
        writer.add_tensor(f"{name}.lora_b",
                          (rng.normal(0, 0.5, (n_out, rank)) * scale_b).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
