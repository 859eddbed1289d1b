"""``writer-assistant evaluate`` on the real embedded model with a tiny LoRA adapter."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from app.cli import app
from tests.finetune.adapters import write_lora
from tests.finetune.evaluation_data import write_validation

pytestmark = pytest.mark.model


def test_evaluate_prints_side_by_side_and_writes_the_report_and_chart(tmp_path, monkeypatch):
    monkeypatch.setenv("EVALUATION_N_CTX", "512")
    adapter_dir = tmp_path / "adapters" / "tiny"
    write_lora(adapter_dir / "adapter.gguf", scale_b=0.2)
    dataset = tmp_path / "datasets" / "holmes"
    write_validation(dataset / "validation.jsonl")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "evaluate", "--validation", str(dataset), "--adapter", str(adapter_dir),
        "--examples", "2", "--max-tokens", "4", "--out", str(out), "--no-style"])
    assert result.exit_code == 0, result.output
    for text in ("perplexity (lower is better)", "ROUGE-L F1", "BLEU", "Side by side",
                 "real next passage", "Not measured (--no-style)"):
        assert text in result.output
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["examples"] == 2 and report["settings"]["max_tokens"] == 4
    assert f"{report['base']['perplexity']:g}" in result.output
    assert (out / "chart.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_refuses_an_empty_validation_split_before_loading_a_model(tmp_path):
    empty = tmp_path / "validation.jsonl"
    empty.write_text("")
    adapter = tmp_path / "adapter.gguf"
    adapter.write_bytes(b"GGUF")
    result = CliRunner().invoke(app, ["evaluate", "--validation", str(empty),
                                      "--adapter", str(adapter), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "dataset_invalid" in result.output and "no continuation example" in result.output
    assert not (tmp_path / "o").exists()
