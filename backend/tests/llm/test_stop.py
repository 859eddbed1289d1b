"""Stop strings: the scanner every backend cuts with, the fake model honouring them, the
remote request carrying them, and the writer's specs setting them."""

from __future__ import annotations

import pytest

from app.agents.registry import REGISTRY
from app.config import Settings
from app.llm.fake import FakeGenerator
from app.llm.protocol import (
    ChatMessage,
    Completion,
    SamplingParams,
    StopScanner,
    TokenDelta,
    final_completion,
)
from app.schemas.requests import GenerateChapterRequest
from tests.conftest import seed_example

MESSAGES = [ChatMessage("user", "Write chapter 3.")]


def scan(pieces: list[str], stops: tuple[str, ...]) -> tuple[list[str], bool]:
    scanner = StopScanner(stops)
    out = [scanner.feed(piece) for piece in pieces]
    out.append(scanner.flush())
    return [piece for piece in out if piece], scanner.stopped


def test_the_scanner_cuts_at_a_stop_split_across_pieces() -> None:
    out, stopped = scan(["The end.", "\nChap", "ter 4", ": More"], ("\nChapter 4",))
    assert "".join(out) == "The end." and stopped


def test_the_scanner_releases_what_turned_out_not_to_be_a_stop() -> None:
    out, stopped = scan(["The end.", "\nChap", "el bells rang."], ("\nChapter 4",))
    assert out == ["The end.", "\nChapel bells rang."] and not stopped


def test_the_scanner_takes_the_earliest_stop_and_passes_through_without_stops() -> None:
    out, _ = scan(["a User: b <|im_end|> c"], ("<|im_end|>", "User:"))
    assert out == ["a "]
    assert scan(["a", "b"], ()) == (["a", "b"], False)


def test_the_scanner_holds_back_a_partial_stop_until_the_end() -> None:
    out, stopped = scan(["Fin.", "\n"], ("\nChapter 4",))
    assert out == ["Fin.", "\n"] and not stopped


async def test_the_fake_model_ends_its_reply_at_a_stop_string() -> None:
    fake = FakeGenerator(replies=["Alice cried. \nChapter 4: The Caucus-Race and more"])
    params = SamplingParams(max_tokens=50, stop=("\nChapter 4",))
    items = [item async for item in fake.stream(MESSAGES, params)]
    completion = items[-1]
    assert isinstance(completion, Completion)
    assert completion.text == "Alice cried. " and completion.finish_reason == "stop"
    assert "".join(i.text for i in items if isinstance(i, TokenDelta)) == completion.text
    # the tokens up to the one that completed the stop string were produced
    assert completion.completion_tokens == 4


async def test_the_fake_model_without_a_stop_in_its_reply_ends_as_before() -> None:
    fake = FakeGenerator(replies=["Alice cried a pool of tears."])
    whole = await final_completion(fake.stream(MESSAGES, SamplingParams(
        max_tokens=50, stop=("\nChapter 4",))))
    cut = await final_completion(fake.stream(MESSAGES, SamplingParams(
        max_tokens=3, stop=("\nChapter 4",))))
    assert (whole.text, whole.finish_reason) == ("Alice cried a pool of tears.", "stop")
    assert (cut.text, cut.finish_reason) == ("Alice cried a ", "length")


def test_sampling_of_carries_stop_strings() -> None:
    params = SamplingParams.of(Settings().model.sampling, max_tokens=10, stop=["\nUser:"])
    assert params.stop == ("\nUser:",)
    assert SamplingParams(max_tokens=1).stop == ()


def test_the_remote_request_carries_stop_strings() -> None:
    from app.llm.remote import RemoteGenerator

    request = RemoteGenerator._request  # the keyword arguments of chat.completions.create
    generator = object.__new__(RemoteGenerator)
    generator._model, generator._json_object_schema = "m", False
    assert request(generator, MESSAGES, SamplingParams(max_tokens=5, stop=("\nX",)))["stop"] \
        == ["\nX"]
    assert "stop" not in request(generator, MESSAGES, SamplingParams(max_tokens=5))


@pytest.mark.parametrize(("number", "title", "stop"), [
    (None, None, "\nChapter 2"), (3, "The Pool of Tears", "\nChapter 4")])
def test_the_writer_stops_at_the_next_chapter(number: int | None, title: str | None,
                                             stop: str) -> None:
    spec = REGISTRY["generate-chapter"]
    request = GenerateChapterRequest.model_validate(
        {**seed_example(), "chapter_number": number, "title": title})
    task = spec.build_task(request)
    assert stop in spec.stop_for(task)
    if title:  # the task ends on the heading the chapter starts with
        assert task.text.endswith(f"\n\nChapter {number}: {title}")
    else:
        assert 'starting with the heading "Chapter 1"' in task.text


@pytest.mark.model
async def test_the_embedded_model_ends_at_a_stop_string() -> None:
    from app.llm.llama import LlamaRuntime

    model = LlamaRuntime.load(Settings(llm_n_ctx=512).model)
    try:
        messages = [ChatMessage("user", "Count from one to twenty in words, comma-separated.")]
        free = await model.generate(messages, SamplingParams(max_tokens=40, temperature=0))
        stop = free.text[len(free.text) // 2:][:6]  # a piece from the middle of what it writes
        cut = free.text[:free.text.index(stop)]
        items = [item async for item in model.stream(
            messages, SamplingParams(max_tokens=40, temperature=0, stop=(stop,)))]
    finally:
        await model.aclose()
    completion = items[-1]
    assert isinstance(completion, Completion)
    assert completion.text == cut and completion.finish_reason == "stop"
    assert "".join(i.text for i in items if isinstance(i, TokenDelta)) == cut
    # every token up to the one that completed the stop string counts, none after it
    assert model.count_tokens(cut) <= completion.completion_tokens < free.completion_tokens
