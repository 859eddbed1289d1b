"""Validation examples for the evaluation tests: consecutive paragraphs of a Sherlock Holmes
story (``../shared/corpus``), written as ``writer-assistant dataset`` writes its JSONL
(:meth:`app.finetune.dataset.Example.record`: a continuation prompt ends with the paragraph
break)."""

from __future__ import annotations

import json
from pathlib import Path

from app.finetune.dataset import PASSAGE_BREAK

CORPUS = Path(__file__).resolve().parents[4] / "shared" / "corpus"
STORY = CORPUS / "doyle-adventures-of-sherlock-holmes.txt"


def paragraphs(count: int, start: int = 20, min_words: int = 40) -> list[str]:
    """``count`` paragraphs of at least ``min_words`` words, from the ``start``-th on."""
    text = STORY.read_text(encoding="utf-8")
    found = [" ".join(p.split()) for p in text.split("\n\n") if len(p.split()) >= min_words]
    return found[start:start + count]


def write_validation(path: Path, examples: int = 2) -> Path:
    """A validation JSONL of ``examples`` (context, next passage) pairs at ``path``."""
    chosen = paragraphs(2 * examples)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for context, following in zip(chosen[::2], chosen[1::2], strict=True):
            out.write(json.dumps({"kind": "continuation", "prompt": context + PASSAGE_BREAK,
                                  "completion": following, "file": STORY.name,
                                  "unit": STORY.name}) + "\n")
    return path
