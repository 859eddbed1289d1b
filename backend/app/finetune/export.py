"""A peft LoRA adapter as a GGUF LoRA adapter that llama.cpp loads, and the check that an
adapter fits a base model.

The format is llama.cpp's (read from its ``convert_lora_to_gguf.py`` and
``src/llama-adapter.cpp``; nothing of it is copied here):

- metadata ``general.type = "adapter"``, ``general.architecture`` equal to the base model's
  (llama.cpp refuses another), ``adapter.type = "lora"`` and ``adapter.lora.alpha`` (float32);
  llama.cpp scales each pair by ``alpha / rank``, the rank read from the tensors, as peft does
  with ``lora_alpha / r``;
- for each adapted base tensor ``NAME`` (``blk.3.attn_q.weight``) two tensors,
  ``NAME.lora_a`` and ``NAME.lora_b``, holding peft's ``lora_A.weight`` (numpy shape
  ``(rank, in_features)``) and ``lora_B.weight`` (``(out_features, rank)``) as they are: GGUF
  lists dimensions in the reverse order of numpy, so llama.cpp sees ``a`` as
  ``ne = [in_features, rank]`` and ``b`` as ``ne = [rank, out_features]``, which is what it
  checks against the base tensor's ``ne = [in_features, out_features]``.

The rope permutation. llama.cpp's converter permutes the rows of a llama model's q and k
projections (``convert_hf_to_gguf.py``, ``LlamaModel.permute``: rows regrouped per head from
``(2, head_dim / 2)`` to ``(head_dim / 2, 2)``), and transformers' GGUF loader undoes it
(``LlamaTensorProcessor._reverse_permute_weights``), so the model we fine-tune holds q and k
rows in Hugging Face order. The adapter's ``B @ A`` is added to the GGUF's permuted rows, so
the rows of ``lora_b`` for ``q_proj`` and ``k_proj`` get the converter's permutation (q with
``n_head`` groups, k with ``n_head_kv``); ``lora_a`` acts on columns and is unchanged.

The base model's identity. Besides ``general.base_model.0.name`` (the GGUF convention), the
adapter records the base GGUF file's SHA-256 and architecture under :data:`BASE_SHA256_KEY`
and :data:`BASE_ARCHITECTURE_KEY`; :func:`check_adapter` compares them with a base file.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from safetensors.numpy import load_file

from app.errors import AdapterMismatch, InvalidAdapter, ModelUnavailable
from app.llm.llama import check_gguf, file_sha256

logger = logging.getLogger(__name__)

#: Custom metadata: the SHA-256 (hex) of the base GGUF file the adapter was trained on.
BASE_SHA256_KEY = "writer_assistant.base_model.sha256"
#: Custom metadata: the base model's ``general.architecture``, kept beside its hash.
BASE_ARCHITECTURE_KEY = "writer_assistant.base_model.architecture"
#: Custom metadata: the base GGUF's file name (informative; the hash decides).
BASE_FILE_KEY = "writer_assistant.base_model.file"

#: Architectures whose q/k rows transformers' GGUF loader un-permutes (its
#: ``TENSOR_PROCESSORS`` maps only ``llama`` to ``LlamaTensorProcessor``), so lora_b of q/k
#: must be permuted back.
_ROPE_PERMUTED = frozenset({"llama"})
#: Architectures this exporter maps (those :func:`gguf.get_tensor_name_map` knows, limited to
#: the ones tested here).
SUPPORTED_ARCHITECTURES = frozenset({"llama"})

_PEFT_PREFIX = "base_model.model."
_LORA_A = ".lora_A.weight"
_LORA_B = ".lora_B.weight"


@dataclass(frozen=True)
class BaseModelInfo:
    """What the export needs of the base GGUF: ``architecture`` (``general.architecture``),
    ``name`` (``general.name``, or the file's stem), ``block_count``, ``n_head`` and
    ``n_head_kv`` (attention heads of q and of k/v), and ``sha256`` (of the file, hex)."""

    architecture: str
    name: str
    block_count: int
    n_head: int
    n_head_kv: int
    sha256: str
    file: str


def _field(reader: gguf.GGUFReader, key: str) -> Any:
    field = reader.get_field(key)
    return None if field is None else field.contents()


def read_base_model(base_gguf: Path) -> BaseModelInfo:
    """Read the architecture, size and hash of the base GGUF at ``base_gguf``.

    Raises:
        ModelUnavailable: the file is missing or not GGUF.
        InvalidAdapter: the file is a GGUF but not a model (an adapter, say) or lacks the
            architecture's head counts.
    """
    check_gguf(base_gguf, "the base model")
    reader = gguf.GGUFReader(base_gguf)
    kind = _field(reader, gguf.Keys.General.TYPE) or gguf.GGUFType.MODEL
    architecture = _field(reader, gguf.Keys.General.ARCHITECTURE)
    if kind != gguf.GGUFType.MODEL or not architecture:
        raise InvalidAdapter(f"{base_gguf.name} is not a base model GGUF (general.type "
                             f"{kind!r}).")
    block_count = _field(reader, gguf.Keys.LLM.BLOCK_COUNT.format(arch=architecture))
    n_head = _field(reader, gguf.Keys.Attention.HEAD_COUNT.format(arch=architecture))
    n_head_kv = _field(reader, gguf.Keys.Attention.HEAD_COUNT_KV.format(arch=architecture))
    if block_count is None or n_head is None:
        raise InvalidAdapter(f"{base_gguf.name} lacks the block or head count of its "
                             f"architecture {architecture!r}.")
    return BaseModelInfo(
        architecture=str(architecture),
        name=str(_field(reader, gguf.Keys.General.NAME) or base_gguf.stem),
        block_count=int(block_count),
        n_head=int(n_head),
        n_head_kv=int(n_head_kv if n_head_kv is not None else n_head),
        sha256=file_sha256(base_gguf),
        file=base_gguf.name,
    )


def permute_rope_rows(rows: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's permutation of the q/k rows of a llama model, applied to ``rows`` (shape
    ``(n_head * head_dim, k)``): within each head, rows ordered ``(2, head_dim / 2)`` become
    ``(head_dim / 2, 2)`` (after ``LlamaModel.permute`` in llama.cpp's
    ``convert_hf_to_gguf.py``). The inverse of transformers' ``_reverse_permute_weights``."""
    out_features = rows.shape[0]
    half = out_features // n_head // 2
    grouped = rows.reshape(n_head, 2, half, *rows.shape[1:])
    return grouped.swapaxes(1, 2).reshape(rows.shape)


def _lora_alpha(config: dict[str, Any]) -> float:
    """``adapter.lora.alpha`` such that llama.cpp's ``alpha / rank`` equals peft's scaling."""
    if config.get("peft_type", "LORA") != "LORA":
        raise InvalidAdapter(f"Only LoRA adapters export to GGUF, not {config['peft_type']}.")
    if config.get("use_dora"):
        raise InvalidAdapter("DoRA adapters have no GGUF LoRA form in llama.cpp.")
    if config.get("alpha_pattern"):
        raise InvalidAdapter("Per-module alpha (alpha_pattern) has no GGUF form: llama.cpp "
                             "takes one alpha per adapter.")
    if config.get("bias", "none") != "none":
        raise InvalidAdapter("Adapters that train biases have no GGUF LoRA form.")
    alpha = float(config["lora_alpha"])
    if config.get("use_rslora"):
        # rsLoRA scales by alpha / sqrt(r); llama.cpp by alpha / r.
        alpha *= float(config["r"]) ** 0.5
    return alpha


def _pairs(weights: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """peft module path (``model.layers.3.self_attn.q_proj``) -> (lora_A, lora_B)."""
    halves: dict[str, dict[str, np.ndarray]] = {}
    for key, value in weights.items():
        for suffix, half in ((_LORA_A, "a"), (_LORA_B, "b")):
            if key.endswith(suffix):
                module = key.removeprefix(_PEFT_PREFIX).removesuffix(suffix)
                halves.setdefault(module, {})[half] = value
                break
        else:
            raise InvalidAdapter(f"The adapter holds {key!r}, not a LoRA A/B weight "
                                 "(trained embeddings or norms have no GGUF LoRA form here).")
    pairs = {}
    for module, found in halves.items():
        if set(found) != {"a", "b"}:
            raise InvalidAdapter(f"The adapter's {module} lacks its lora_A or lora_B.")
        pairs[module] = (found["a"], found["b"])
    return pairs


def export_lora_gguf(adapter_dir: Path, base_gguf: Path, out_path: Path, *,
                     dtype: str = "f32") -> Path:
    """Write the peft LoRA adapter in ``adapter_dir`` (``adapter_config.json`` and
    ``adapter_model.safetensors``, as ``PeftModel.save_pretrained`` writes them) to
    ``out_path`` as a GGUF LoRA adapter for the base model ``base_gguf``, loadable with
    ``Llama(model_path=base_gguf, lora_path=out_path)``.

    ``dtype`` is ``"f32"`` or ``"f16"`` for the A/B tensors (a rank-16 adapter of every
    projection of SmolLM2-135M is about 19 MB at f32). Returns ``out_path``.

    Raises:
        InvalidAdapter: the adapter is missing, not a plain LoRA (DoRA, per-module alpha,
            trained biases, embeddings), names a module the base has no tensor for, or the
            base architecture is not supported.
        ModelUnavailable: ``base_gguf`` is missing or not GGUF.
    """
    config_path = adapter_dir / "adapter_config.json"
    weights_path = adapter_dir / "adapter_model.safetensors"
    if not config_path.is_file() or not weights_path.is_file():
        raise InvalidAdapter(f"{adapter_dir} holds no peft adapter (adapter_config.json and "
                             "adapter_model.safetensors).")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    alpha = _lora_alpha(config)
    base = read_base_model(base_gguf)
    if base.architecture not in SUPPORTED_ARCHITECTURES:
        raise InvalidAdapter(f"Exporting adapters for {base.architecture!r} models is not "
                             f"supported (only {sorted(SUPPORTED_ARCHITECTURES)}).")
    np_dtype = {"f32": np.float32, "f16": np.float16}[dtype]
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == base.architecture)
    names = gguf.get_tensor_name_map(arch, base.block_count)

    writer = gguf.GGUFWriter(out_path, base.architecture)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    writer.add_base_model_count(1)
    writer.add_base_model_name(0, base.name)
    writer.add_string(BASE_SHA256_KEY, base.sha256)
    writer.add_string(BASE_ARCHITECTURE_KEY, base.architecture)
    writer.add_string(BASE_FILE_KEY, base.file)

    for module, (lora_a, lora_b) in sorted(_pairs(load_file(weights_path)).items()):
        target = names.get_name(module)
        if target is None:
            raise InvalidAdapter(f"The base model has no tensor for the adapter's {module}.")
        rows = lora_b
        if base.architecture in _ROPE_PERMUTED:
            if module.endswith("self_attn.q_proj"):
                rows = permute_rope_rows(lora_b, base.n_head)
            elif module.endswith("self_attn.k_proj"):
                rows = permute_rope_rows(lora_b, base.n_head_kv)
        writer.add_tensor(f"{target}.weight.lora_a", np.ascontiguousarray(lora_a, np_dtype))
        writer.add_tensor(f"{target}.weight.lora_b", np.ascontiguousarray(rows, np_dtype))

    out_path.parent.mkdir(parents=True, exist_ok=True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    logger.info("wrote GGUF LoRA adapter %s for %s (alpha %.1f)", out_path, base.name, alpha)
    return out_path


@dataclass(frozen=True)
class AdapterInfo:
    """A GGUF LoRA adapter's identity: ``alpha``, the base model's ``architecture``,
    ``base_sha256`` (hex; empty when the adapter was not written here) and ``base_name``."""

    alpha: float
    architecture: str
    base_sha256: str
    base_name: str


def read_adapter(adapter_path: Path) -> AdapterInfo:
    """Read the identity of the GGUF LoRA adapter at ``adapter_path``.

    Raises:
        InvalidAdapter: missing, not GGUF, or not a LoRA adapter.
    """
    try:
        check_gguf(adapter_path, "the adapter")
        reader = gguf.GGUFReader(adapter_path)
    except (ModelUnavailable, ValueError, OSError) as error:
        raise InvalidAdapter(f"{adapter_path.name} is not a readable GGUF file.") from error
    if (_field(reader, gguf.Keys.General.TYPE) != gguf.GGUFType.ADAPTER
            or _field(reader, gguf.Keys.Adapter.TYPE) != "lora"):
        raise InvalidAdapter(f"{adapter_path.name} is not a GGUF LoRA adapter.")
    return AdapterInfo(
        alpha=float(_field(reader, gguf.Keys.Adapter.LORA_ALPHA) or 0.0),
        architecture=str(_field(reader, gguf.Keys.General.ARCHITECTURE) or ""),
        base_sha256=str(_field(reader, BASE_SHA256_KEY) or ""),
        base_name=str(_field(reader, gguf.Keys.General.BASE_MODEL_NAME.format(id=0)) or ""),
    )


def check_adapter(adapter_path: Path, base_gguf_path: Path) -> AdapterInfo:
    """Check that the GGUF LoRA adapter at ``adapter_path`` was made for the base model at
    ``base_gguf_path``: same architecture and same base file SHA-256. Returns the adapter's
    identity.

    Raises:
        InvalidAdapter: the adapter is not a GGUF LoRA adapter.
        AdapterMismatch: it records another base model (or none): ``details`` carries
            ``adapter_base_sha256`` and ``base_sha256``.
        ModelUnavailable: the base file is missing or not GGUF.
    """
    info = read_adapter(adapter_path)
    base = read_base_model(base_gguf_path)
    if info.architecture != base.architecture or info.base_sha256 != base.sha256:
        raise AdapterMismatch(
            f"The adapter {adapter_path.name} was made for another base model "
            f"({info.base_name or 'unknown'}, {info.architecture or 'no architecture'}, "
            f"sha256 {info.base_sha256[:12] or 'not recorded'}) than {base.file} "
            f"({base.architecture}, sha256 {base.sha256[:12]}); train it again on this base.",
            adapter_base_sha256=info.base_sha256, base_sha256=base.sha256,
        )
    return info
