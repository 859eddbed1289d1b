"""The training set: the Sherlock Holmes stories split by story, validation text never in
training, counts that match the files, scene-from-summary pairs from the distillation cache,
and too little text refused before anything is written (exit code 2)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from app import cli
from app.archive.documents import Document
from app.context.summaries import SummaryCache
from app.errors import DatasetTooSmall
from app.finetune.dataset import (
    PASSAGE_BREAK,
    CachedSummaries,
    build_dataset,
    read_examples,
    read_report,
    units_of,
)
from app.llm.llama import GgufTokenizer
from tests.finetune.conftest import ALICE, SHERLOCK, STORIES


def test_the_stories_are_split_by_story(sherlock_dataset):
    out, report = sherlock_dataset
    assert report.split_by == "chapter"  # one file: its chapters are the stories
    train, validation = set(report.train.units), set(report.validation.units)
    assert len(train | validation) == STORIES and not train & validation
    assert len(validation) == round(0.2 * STORIES)
    assert all("#" in unit for unit in train | validation)
    assert "doyle-adventures-of-sherlock-holmes.txt#I. A SCANDAL IN BOHEMIA" in train | validation
    assert read_report(out) == report


def test_validation_text_never_appears_in_training(sherlock_dataset, sherlock):
    out, report = sherlock_dataset
    train = read_examples(out / "train.jsonl")
    validation = read_examples(out / "validation.jsonl")
    assert {r["unit"] for r in train} == set(report.train.units)
    assert {r["unit"] for r in validation} == set(report.validation.units)
    trained_on = "\n".join(str(r["prompt"]) + str(r["completion"]) for r in train)
    for record in validation:
        # every validation passage's text (a long enough piece to be unique) is unseen
        assert str(record["completion"])[:200] not in trained_on
    # and the held-out stories' own text is absent from training, while it is in the corpus
    units = {u.name: u.text for u in units_of(sherlock, "chapter")[0]}
    for name in report.validation.units:
        opening = units[name].split("\n\n")[1][:120]
        assert opening in sherlock[0].text and opening not in trained_on


def test_the_report_counts_what_the_files_hold(sherlock_dataset, tokenizer):
    out, report = sherlock_dataset
    for split, part in (("train", report.train), ("validation", report.validation)):
        records = read_examples(out / f"{split}.jsonl")
        assert part.examples == len(records) == part.continuation > 50
        assert part.prompt_tokens == sum(int(r["prompt_tokens"]) for r in records)
        assert part.completion_tokens == sum(int(r["completion_tokens"]) for r in records)
        assert part.files == ["doyle-adventures-of-sherlock-holmes.txt"]
        for record in records[:20]:
            assert record["kind"] == "continuation"
            assert str(record["prompt"]).endswith(PASSAGE_BREAK)
            assert int(record["completion_tokens"]) == tokenizer.count_tokens(
                str(record["completion"])) <= report.passage_tokens
    # passages chain: each completion is the next record's prompt
    records = read_examples(out / "train.jsonl")
    assert records[0]["completion"] + PASSAGE_BREAK == records[1]["prompt"]
    assert report.corpus_tokens == report.train.text_tokens + report.validation.text_tokens
    assert 100_000 < report.corpus_tokens < 200_000
    assert report.scene_from_summary_pairs == 0


def test_the_split_depends_on_the_seed_only(sherlock, tokenizer, tmp_path):
    def held_out(seed: int, name: str) -> list[str]:
        return build_dataset(sherlock, tmp_path / name, tokenizer=tokenizer, source="s",
                             passage_tokens=256, validation_fraction=0.2,
                             seed=seed).validation.units

    assert held_out(0, "a") == held_out(0, "b")
    assert any(held_out(seed, f"s{seed}") != held_out(0, "a") for seed in (1, 2, 3))


def test_two_files_split_by_file(tokenizer, tmp_path):
    result = CliRunner().invoke(cli.app, [
        "dataset", str(ALICE), str(SHERLOCK), "--out", str(tmp_path), "--passage-tokens",
        "256", "--seed", "1"])
    assert result.exit_code == 0, result.output
    report = read_report(tmp_path)
    assert report.split_by == "file"
    assert len(report.train.files) == len(report.validation.files) == 1
    assert report.train.files != report.validation.files
    assert "train: " in result.output and "validation: " in result.output


def test_scene_from_summary_pairs_come_from_the_summary_cache(sherlock, tokenizer, tmp_path):
    units = units_of(sherlock, "chapter")[0]
    cache = SummaryCache(tmp_path / "cache", 10**8, tokenizer.model_name)
    summaries = CachedSummaries(cache, "local", 200, tokenizer.count_tokens)
    story = units[4]
    summary = "Holmes untangles the mystery of the five orange pips."
    # as the distiller caches an older chapter distilled whole (app/context/overflow.py)
    from app.context.distill import Layer, Strategy, SummaryJob

    target = min(200, tokenizer.count_tokens(story.text) // 2)
    cache.set(SummaryJob(Layer.recent_story, Strategy.plot, 1, story.text, target, (), "x"),
              summary, tenant="local")
    cache.set(SummaryJob(Layer.recent_story, Strategy.plot, 1, units[5].text, target, (), "x"),
              "another tenant's", tenant="someone-else")
    assert summaries.find(story.text) == summary
    assert summaries.find(units[5].text) is None
    report = build_dataset(sherlock, tmp_path / "out", tokenizer=tokenizer, source="s",
                           passage_tokens=256, validation_fraction=0.2, summaries=summaries)
    cache.close()
    assert report.scene_from_summary_pairs == 1
    assert report.train.scene_from_summary + report.validation.scene_from_summary == 1
    records = [r for split in ("train", "validation")
               for r in read_examples(tmp_path / "out" / f"{split}.jsonl")
               if r["kind"] == "scene_from_summary"]
    assert len(records) == 1
    assert summary in str(records[0]["prompt"]) and records[0]["completion"] == story.text
    assert records[0]["unit"] == story.name


# --- too little text ------------------------------------------------------------------------


def _dataset(*args: str):
    return CliRunner().invoke(cli.app, ["dataset", *args])


def test_an_empty_folder_is_refused_before_anything_is_written(tmp_path):
    (tmp_path / "empty").mkdir()
    result = _dataset(str(tmp_path / "empty"), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert "dataset_too_small" in result.output and "0 tokens" in result.output
    assert not (tmp_path / "out").exists()


def test_a_tiny_corpus_is_refused(tmp_path):
    (tmp_path / "a.txt").write_text("It was a dark night.\n\nThe rain fell.\n", encoding="utf-8")
    (tmp_path / "b.md").write_text("# Two\n\nShort.\n", encoding="utf-8")
    result = _dataset(str(tmp_path / "a.txt"), str(tmp_path / "b.md"), "--out",
                      str(tmp_path / "out"))
    assert result.exit_code == 2
    assert "dataset_too_small" in result.output and "FINETUNE_MIN_CORPUS_TOKENS" in result.output
    assert not (tmp_path / "out").exists()


def test_a_single_file_without_chapters_cannot_be_split(tmp_path):
    text = "\n\n".join(f"Paragraph {i}: the fog lay thick upon Baker Street that morning."
                       for i in range(300))
    (tmp_path / "one.txt").write_text(text, encoding="utf-8")
    result = _dataset(str(tmp_path / "one.txt"), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert "dataset_too_small" in result.output and "at least two" in result.output
    assert not (tmp_path / "out").exists()


def test_a_validation_split_without_a_single_pair_is_refused(tokenizer, tmp_path):
    long = "\n\n".join(f"Paragraph {i} of the long story, in which much happens." for i in
                       range(400))
    documents = [Document("long.txt", "long", long, (), "text"),
                 Document("short.txt", "short", "One lone paragraph.", (), "text")]
    with pytest.raises(DatasetTooSmall) as raised:
        build_dataset(documents, tmp_path / "out", tokenizer=tokenizer, source="s",
                      passage_tokens=64, validation_fraction=0.5, min_corpus_tokens=100,
                      seed=next(s for s in range(20) if _short_held_out(s)))
    assert raised.value.details["split"] == "validation"
    assert "short.txt" in raised.value.message
    assert not (tmp_path / "out").exists()


def _short_held_out(seed: int) -> bool:
    import random

    order = ["long.txt", "short.txt"]
    random.Random(seed).shuffle(order)
    return order[0] == "short.txt"


def test_a_missing_path_is_exit_code_2(tmp_path):
    result = _dataset(str(tmp_path / "nowhere.txt"), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2


def test_tokens_are_the_served_models(tokenizer: GgufTokenizer, sherlock_dataset):
    out, _ = sherlock_dataset
    record = read_examples(out / "validation.jsonl")[0]
    assert tokenizer.tokenize(str(record["completion"]))
    assert json.loads((out / "report.json").read_text())["tokenizer"] == tokenizer.model_name
