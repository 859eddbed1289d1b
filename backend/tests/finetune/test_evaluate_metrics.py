"""The evaluation's metrics on the real embedded model with real GGUF LoRA adapters (tiny
ones, through the fine-tune's exporter): an adapter whose lora_b is zero is the base model
exactly; a non-zero one changes the perplexity; the report and chart are written."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from app.errors import DatasetInvalid, DatasetNotFound
from app.finetune.evaluate import (
    EvaluationReport,
    Evaluator,
    Scorer,
    StyleReference,
    continuation_nll,
    evaluate,
    open_scorers,
    read_examples,
    write_outputs,
)
from app.voice.profile import VoiceProfile
from tests.finetune.adapters import write_lora
from tests.finetune.evaluation_data import paragraphs, write_validation
from tests.hash_embedder import HashEmbedder

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {"zero": write_lora(root / "zero.gguf", scale_b=0.0),
            "tuned": write_lora(root / "tuned.gguf", scale_b=0.2)}


@pytest.fixture(scope="module")
def zero_pair(adapters: dict[str, Path]) -> Iterator[tuple[Scorer, Scorer]]:
    pair = open_scorers(None, adapters["zero"], n_ctx=512)
    yield pair
    for scorer in pair:
        scorer.close()


@pytest.fixture(scope="module")
def tuned_pair(adapters: dict[str, Path]) -> Iterator[tuple[Scorer, Scorer]]:
    pair = open_scorers(None, adapters["tuned"], n_ctx=512)
    yield pair
    for scorer in pair:
        scorer.close()


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory):
    return read_examples(write_validation(tmp_path_factory.mktemp("data") / "v.jsonl"))


def test_continuation_nll_is_the_negative_log_softmax_of_the_target():
    logits = np.array([[0.0, 0.0, math.log(2.0)], [1.0, 1.0, 1.0]], dtype=np.float32)
    nll = continuation_nll(logits, [2, 0])
    assert nll == pytest.approx([-math.log(2 / 4), math.log(3)])


def test_zero_lora_b_gives_the_base_perplexity_and_continuation(zero_pair, examples):
    result = Evaluator(*zero_pair, max_tokens=8).run_example(0, examples[0])
    assert result.row.target_tokens > 20
    assert result.tuned_nll == pytest.approx(result.base_nll, rel=1e-6)
    assert result.row.tuned.perplexity == pytest.approx(result.row.base.perplexity, rel=1e-6)
    assert result.tuned_text == result.base_text != ""
    # the base model finds Conan Doyle's next paragraph plausible, but not certain
    assert 1.5 < result.row.base.perplexity < 500


def test_nonzero_lora_b_changes_the_perplexity(tuned_pair, examples):
    result = Evaluator(*tuned_pair, max_tokens=8).run_example(0, examples[0])
    assert abs(result.tuned_nll - result.base_nll) > 1.0  # nats over the passage


def test_report_json_and_chart_png_are_written(tuned_pair, examples, tmp_path):
    embedder = HashEmbedder()
    voice = paragraphs(6, start=100)
    style = StyleReference(VoiceProfile.build(["holmes.txt"], voice, embedder.embed(voice)),
                           embedder.embed)
    report = evaluate(*tuned_pair, examples, adapter="tuned", validation="v.jsonl",
                      max_tokens=8, style=style)
    json_path, chart_path = write_outputs(report, tmp_path / "out")

    again = EvaluationReport.model_validate_json(json_path.read_text())
    assert again == report
    assert chart_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(report.examples) == len(report.samples) == 2
    rows = report.examples
    tokens = sum(r.target_tokens for r in rows)
    assert report.base.target_tokens == tokens
    assert report.base.perplexity == pytest.approx(
        math.exp(sum(r.base.nll_nats for r in rows) / tokens), rel=1e-3)
    assert report.tuned.perplexity != pytest.approx(report.base.perplexity, rel=1e-3)
    for which in (report.base, report.tuned):
        assert 0.0 <= which.rouge_l <= 1.0 and 0.0 <= which.bleu <= 100.0
        assert 0 < which.completion_tokens <= 16
    assert report.base.style_similarity is not None
    assert -1.0 <= report.base.style_similarity <= 1.0
    # a continuation without words (the strong test adapter may write only blank lines)
    # has no style similarity; the mean is over the others
    styles = [row.tuned.style_similarity for row in rows]
    words = [bool(sample.tuned.split()) for sample in report.samples]
    assert [s is not None for s in styles] == words
    assert report.reference_style_similarity is not None and report.style_note is None
    assert report.samples[0].reference == examples[0].continuation
    assert report.settings.max_tokens == 8 and report.settings.temperature == 0.0
    assert "tok:13a" in report.settings.bleu_signature
    assert json.loads(json_path.read_text())["settings"]["adapter"] == "tuned"


def test_without_a_voice_profile_style_is_null_with_the_reason(zero_pair, examples):
    report = evaluate(*zero_pair, examples[:1], adapter="zero", validation="v.jsonl",
                      max_tokens=4, style_note="no voice files")
    assert report.base.style_similarity is None and report.tuned.style_similarity is None
    assert report.style_note == "no voice files"


@pytest.mark.parametrize(("content", "message"), [
    ("", "holds no continuation example"),
    ("\n\n", "holds no continuation example"),
    ('{"kind": "scene_from_summary", "prompt": "a", "completion": "b"}\n',
     "holds no continuation example"),
    ('{"prompt": "a"}\n', "line 1 needs prompt and completion"),
    ('{"prompt": "a", "completion": "b"}\nnot json\n', "line 2 is not JSON"),
    ('["prompt", "completion"]\n', "line 1 needs prompt and completion"),
])
def test_bad_validation_files_are_refused_with_what_to_fix(tmp_path, content, message):
    path = tmp_path / "validation.jsonl"
    path.write_text(content)
    with pytest.raises(DatasetInvalid, match=message):
        read_examples(path)


def test_a_missing_validation_file_is_not_found(tmp_path):
    with pytest.raises(DatasetNotFound):
        read_examples(tmp_path / "nothing.jsonl")


def test_the_validation_split_of_a_built_dataset_is_read(tmp_path):
    from app.finetune.dataset import build_dataset, documents_from_paths
    from app.llm.llama import GgufTokenizer, default_model_path
    from tests.finetune.evaluation_data import STORY

    documents = documents_from_paths([STORY], 50_000_000)
    build_dataset(documents, tmp_path, tokenizer=GgufTokenizer.load(default_model_path()),
                  source=str(STORY), split_by="chapter")
    records = [json.loads(line) for line in (tmp_path / "validation.jsonl").open()]
    examples = read_examples(tmp_path / "validation.jsonl")
    assert len(examples) == sum(r["kind"] == "continuation" for r in records) > 0
    assert examples[0].context == records[0]["prompt"] and examples[0].context.endswith("\n\n")
    assert examples[0].source == records[0]["unit"]
