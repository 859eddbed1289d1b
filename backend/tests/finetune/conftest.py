"""Shared fixtures of the fine-tuning tests: the served model's tokenizer, the Sherlock Holmes
stories as the author's corpus, and a dataset built from them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from app.archive.documents import Document
from app.finetune.dataset import DatasetReport, build_dataset, documents_from_paths
from app.llm.llama import GgufTokenizer, default_model_path

CORPUS = Path(__file__).resolve().parents[3].parent / "shared" / "corpus"
SHERLOCK = CORPUS / "doyle-adventures-of-sherlock-holmes.txt"
ALICE = CORPUS / "carroll-alice.txt"
#: The twelve stories of The Adventures of Sherlock Holmes, as the parser titles them.
STORIES = 12


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    """These machines' two cores are shared: training tests use one thread."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def base_gguf() -> Path:
    return default_model_path()


@pytest.fixture(scope="session")
def tokenizer(base_gguf: Path) -> GgufTokenizer:
    return GgufTokenizer.load(base_gguf)


@pytest.fixture(scope="session")
def sherlock() -> list[Document]:
    if not SHERLOCK.is_file():
        pytest.skip(f"the corpus is not at {CORPUS}")
    return documents_from_paths([SHERLOCK], 10**8)


@pytest.fixture(scope="session")
def sherlock_dataset(tmp_path_factory: pytest.TempPathFactory, sherlock: list[Document],
                     tokenizer: GgufTokenizer) -> tuple[Path, DatasetReport]:
    """The stories split by story (two held out), passages of up to 64 tokens."""
    out = tmp_path_factory.mktemp("sherlock-dataset")
    report = build_dataset(sherlock, out, tokenizer=tokenizer, source=str(SHERLOCK),
                           passage_tokens=64, validation_fraction=0.2, seed=0)
    return out, report
