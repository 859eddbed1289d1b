"""Replaying a recorded generation: the same request, prompt and sampling, run again.

A record keeps its request only when the author asked (``store_request``); otherwise the
caller sends the request again and it must be the recorded one (its SHA-256 is compared). An
agent call runs again with exactly the recorded sampling (seed included); a pipeline run
runs again with its recorded seed, from which every call's seed follows. With the same model
file and build, greedy and seeded sampling alike give the same bytes: llama.cpp samples from a
generator seeded per call, and the KV state of a reused prefix is computed on the same chunk
boundaries as a cold one (:class:`app.llm.llama._Schedule`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from app.agents.pipeline import PIPELINE_OPERATION, ChapterPipeline
from app.agents.runner import AgentRunner
from app.agents.spec import AgentSpec
from app.errors import InvalidRequest, ReplayRequestMismatch
from app.generations.records import GenerationRecord, request_sha256, sha256_text
from app.schemas.pipeline import ChapterPipelineRequest
from app.tenancy import current_tenant


@dataclass(frozen=True)
class Replayed:
    """A replay's outcome: the new record's id and text, and what matched the original
    (``prompt_identical`` is ``None`` when either prompt digest is unknown)."""

    generation_id: str | None
    text: str
    identical: bool
    prompt_identical: bool | None
    model_identical: bool
    first_difference: int | None


def first_difference(a: str, b: str) -> int | None:
    """The index of the first character where ``a`` and ``b`` differ (``None``: equal)."""
    if a == b:
        return None
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                min(len(a), len(b)))


def _request(record: GenerationRecord, model: type[Any], given: dict[str, Any] | None) -> Any:
    """The request to replay: ``given``, else the stored one, validated and checked against
    the record's digest.

    Raises:
        InvalidRequest: none given and none stored, or it does not validate.
        ReplayRequestMismatch: it is not the recorded request.
    """
    data = given if given is not None else record.request
    if data is None:
        raise InvalidRequest(
            "This generation's request was not stored (store_request was false): send the "
            "same request as `request` to replay it.", param="request")
    try:
        request = model.model_validate(data)
    except ValidationError as error:
        problem = error.errors()[0]
        where = ".".join(str(part) for part in problem["loc"])
        raise InvalidRequest(f"request.{where}: {problem['msg']}",
                             param=f"request.{where}") from None
    if request_sha256(request) != record.request_sha256:
        raise ReplayRequestMismatch(
            "This request is not the one recorded (its SHA-256 differs): send the request "
            "exactly as it was (the story, every field), or replay a record made with "
            "store_request.", param="request")
    return request


async def replay(runner: AgentRunner, registry: Mapping[str, AgentSpec],
                 record: GenerationRecord, given: dict[str, Any] | None = None) -> Replayed:
    """Run ``record`` again (see the module) and compare the output with the recorded one,
    byte for byte. The replay is recorded too (``replay_of``), never from the cache.

    Raises:
        InvalidRequest: the request is missing or invalid, or the operation is no longer
            served.
        ReplayRequestMismatch: the request given is not the recorded one.
        plus what the operation raises (queue, model, deadline).
    """
    model_identical = (runner.recorder is not None and record.model.sha256 is not None
                       and runner.recorder.identity.sha256 == record.model.sha256)
    if record.kind == "pipeline":
        if not all(op in registry for op in ("generate-chapter", "editor-review",
                                             "rater-feedback", "modify-chapter")):
            raise InvalidRequest(f"{PIPELINE_OPERATION} is not served here.")
        request = _request(record, ChapterPipelineRequest, given)
        request = request.model_copy(update={"seed": record.sampling.seed, "cache": False})
        response = await ChapterPipeline(runner, registry).run(request, replay_of=record.id)
        if runner.recorder is not None and response.generation_id is not None:
            # the same adapter file (or none) as recorded, from the replay's own record
            replayed = await runner.recorder.get(current_tenant.get(), response.generation_id)
            if replayed is not None:
                model_identical = (model_identical and replayed.model.adapter_sha256
                                   == record.model.adapter_sha256)
        return Replayed(response.generation_id, response.chapter_text,
                        response.chapter_text == record.text, None, model_identical,
                        first_difference(record.text, response.chapter_text))
    spec = registry.get(record.operation)
    if spec is None:
        raise InvalidRequest(f"The operation {record.operation} is not served here.")
    request = _request(record, spec.request_model, given)
    result = await runner.run(spec, request, sampling=record.sampling, replay_of=record.id)
    output = result.output.model_dump(mode="json") if result.output is not None else None
    prompt = None
    if record.prompt_sha256 is not None and result.messages:
        prompt = sha256_text(runner.generator.render_prompt(result.messages)) == \
            record.prompt_sha256
    identical = result.text == record.text and output == record.output
    ran_on = result.generation.model if result.generation is not None else None
    if ran_on is not None:  # the same base, and the same adapter file (or none) as recorded
        model_identical = model_identical and ran_on.adapter_sha256 == record.model.adapter_sha256
    return Replayed(result.generation.generation_id if result.generation else None,
                    result.text, identical, prompt, model_identical,
                    first_difference(record.text, result.text))
