"""Fuzz the API: no answer may be a 5xx, and every 4xx has the error body.

* Every operation of the OpenAPI schema, with schemathesis: its examples, ``FUZZ_EXAMPLES``
  generated requests (an operation with no parameters and no body has a single possible
  request, sent once) and, where it adds cases of its own (``CONFIG``), the coverage phase
  (boundary and invalid values, unexpected methods).
* The upload endpoint with generated files: ``.docx`` (valid, mutated, truncated, malformed
  XML, zip bombs, sizes that lie, misnamed), ``.md`` and ``.html`` (pathological nesting and
  markup, over the upload limit, other encodings, misnamed).

Both run against one app on a scripted model that answers every JSON agent with valid JSON,
with a real (temporary) Chroma archive on the hash embedder (no embedding model to load or
run) and small archive limits, so that "too large" is cheap to reach. About 70 s in all on
two busy cores (the schema's generated requests take most: 10-40 ms each to generate).
"""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Iterator

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.config import Settings
from app.llm.fake import FakeGenerator
from app.main import create_app
from tests.api.replies import reply
from tests.archive.crafted import crafted_docx, spaces
from tests.hash_embedder import hash_embedder

#: Generated requests per operation (schemathesis's fuzzing phase).
FUZZ_EXAMPLES = 100
#: Generated uploads.
UPLOAD_EXAMPLES = 150
KiB, MiB = 1024, 1024 * 1024
UPLOAD_LIMIT = 64 * KiB
EXPANDED_LIMIT = 2 * MiB  # python-docx's template alone unpacks to 0.8 MiB


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    state = tmp_path_factory.mktemp("fuzz")
    app = create_app(Settings(summary_cache_dir=state / "summaries",
                              archive_db_path=state / "archive", rate_limit_per_minute=0,
                              rate_limit_concurrent=0, archive_max_upload_bytes=UPLOAD_LIMIT,
                              archive_max_expanded_bytes=EXPANDED_LIMIT),
                     generator=FakeGenerator(replies=[reply]))
    with hash_embedder(), TestClient(app) as client:  # runs the lifespan: the archive opens
        deadline = time.monotonic() + 120
        while client.get("/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/ready").status_code == 200
        yield app


#: The coverage phase (schemathesis's deterministic boundary and invalid values, about 900
#: cases an agent operation, mostly 422s at 4 ms each) runs for every operation but the agent
#: operations other than generate-chapter, and no streaming twin: they take the same request
#: models (the structured context) as generate-chapter or their twin. Run for all, it doubles
#: the run time (to about 2 minutes); generated requests still cover every operation.
CONFIG = schemathesis.config.SchemathesisConfig.from_str("""
[[operations]]
include-tag = "agents"
exclude-path = "/api/v1/generate-chapter"
phases.coverage.enabled = false

[[operations]]
include-path-regex = "/stream$"
phases.coverage.enabled = false
""")
COVERED_AGENT = "POST /api/v1/generate-chapter"


@pytest.fixture(scope="module")
def api_schema(fuzz_app: FastAPI) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_app, config=CONFIG)


@schemathesis.pytest.from_fixture("api_schema").parametrize()
@settings(max_examples=FUZZ_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
def test_no_server_errors(case: schemathesis.Case) -> None:
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, response.text[:300])
    if response.status_code >= 400:
        assert set(response.json()["error"]) >= {"code", "message", "param"}


def test_coverage_phase_runs_where_it_should(api_schema: schemathesis.BaseSchema) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    covered = {operation.label for operation in operations
               if api_schema.config.phases_for(operation=operation).coverage.enabled}
    agents = {operation.label for operation in operations if "agents" in (operation.tags or [])}
    streams = {operation.label for operation in operations if operation.path.endswith("/stream")}
    assert len(operations) >= 38 and len(agents) >= 20 and len(streams) >= 11
    assert covered == {operation.label for operation in operations} - agents - streams | {
        COVERED_AGENT}


# --- generated uploads --------------------------------------------------------------------------

_WORDS = st.sampled_from(["The", "storm", "CHAPTER I.", "Prologue", "a", "é", "—", "\t", "&amp;",
                          "<", ">", "[", "]", "*", "_", "`", "#", "\\", "\r", "\n", "\n\n",
                          "\x00", "\u2028", "\ufeff"])
_PROSE = st.lists(_WORDS, max_size=40).map(" ".join)

#: HTML: nested tags (known and not, closed or not), text, comments, entities, scripts.
_HTML_TAGS = st.sampled_from(["p", "div", "h1", "h2", "li", "ul", "pre", "td", "table", "b",
                              "br", "title", "head", "script", "style", "template", "svg", "x"])
_HTML = st.recursive(
    _PROSE | st.just("<!-- c -->") | st.just("&nbsp;&#0;&#xFFFFFFFF;") | st.just("<![CDATA[x]]>"),
    lambda inner: st.builds(
        lambda tag, body, closed: f"<{tag}>{body}" + (f"</{tag}>" if closed else ""),
        _HTML_TAGS, st.lists(inner, max_size=4).map("".join), st.booleans()),
    max_leaves=30)

#: Markdown: lines of block markup (headings, lists, quotes, fences, tables, setext).
_MD_LINE = st.builds(
    lambda marker, text: marker + text,
    st.sampled_from(["", "# ", "## ", "###### ", "####### ", "- ", "1. ", "> ", "> > - ",
                     "    ", "```", "~~~", "| a | b |", "|---|---|", "===", "---", "<div>",
                     "[x]: /u", "* * *", "\t- "]),
    _PROSE)
_MARKDOWN = st.lists(_MD_LINE, max_size=40).flatmap(
    lambda lines: st.sampled_from(["\n", "\r\n", "\r"]).map(lambda end: end.join(lines)))

#: The body of word/document.xml: paragraphs with and without styles, runs, tabs, breaks.
_W = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'
_PARAGRAPH = st.builds(
    lambda style, text: (f'<w:p>{f"<w:pPr><w:pStyle w:val={style!r}/></w:pPr>" if style else ""}'
                         f"<w:r><w:t>{text}</w:t><w:tab/><w:br/></w:r></w:p>"),
    st.sampled_from([None, "Title", "Heading1", "Heading2", "Normal", "x", 'q"uote', ""]),
    _PROSE.map(lambda text: text.replace("&", "&amp;").replace("<", "&lt;")
               .replace("\x00", "").replace("\r", "")))
_DOCUMENT_XML = st.lists(_PARAGRAPH, max_size=20).map(
    lambda paragraphs: f"<w:document {_W}><w:body>{''.join(paragraphs)}</w:body></w:document>"
    .encode())


def _mutated(data: bytes, draw: st.DrawFn) -> bytes:
    """``data`` with a few bytes overwritten, inserted or cut off."""
    how = draw(st.sampled_from(["flip", "truncate", "insert"]))
    at = draw(st.integers(0, max(len(data) - 1, 0)))
    if how == "truncate":
        return data[:at]
    junk = draw(st.binary(min_size=1, max_size=8))
    return data[:at] + junk + data[at + (len(junk) if how == "flip" else 0):]


@st.composite
def _docx(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["valid", "mutated-xml", "mutated-zip", "bomb", "liar",
                                 "extra-part", "stored", "not-a-zip"]))
    if kind == "valid":
        return crafted_docx(draw(_DOCUMENT_XML))
    if kind == "mutated-xml":
        return crafted_docx(_mutated(draw(_DOCUMENT_XML), draw))
    if kind == "mutated-zip":
        return _mutated(crafted_docx(draw(_DOCUMENT_XML)), draw)
    if kind == "bomb":  # 1 to 64 MiB of spaces in a few KiB
        return crafted_docx(spaces(draw(st.integers(1, 64))))
    if kind == "liar":  # a directory that understates (or overstates) the size
        raw, crc, size = spaces(draw(st.integers(1, 4)))
        return crafted_docx((raw, crc, draw(st.integers(0, 2 * size))))
    if kind == "extra-part":  # a part python-docx never reads, of any size and content
        name = draw(st.sampled_from(["word/media/a.bin", "x.xml", "_rels/x.rels",
                                     "customXml/item1.xml"]))
        return crafted_docx(extra={name: bytes(draw(st.integers(0, 3 * MiB)))})
    if kind == "stored":  # a zip written by zipfile, every part stored or deflated
        buffer = io.BytesIO()
        method = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED,
                                       zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]))
        with zipfile.ZipFile(buffer, "w", method) as package:
            package.writestr("word/document.xml", draw(_DOCUMENT_XML))
        return buffer.getvalue()
    return draw(st.binary(max_size=512))


@st.composite
def _upload(draw: st.DrawFn) -> tuple[str, bytes]:
    content = draw(st.sampled_from(["docx", "markdown", "html", "binary", "huge", "encoded"]))
    if content == "docx":
        data = draw(_docx())
    elif content == "markdown":
        data = draw(_MARKDOWN).encode()
    elif content == "html":
        data = draw(_HTML).encode()
    elif content == "binary":
        data = draw(st.binary(max_size=512))
    elif content == "huge":  # at or over ARCHIVE_MAX_UPLOAD_BYTES
        unit = draw(st.sampled_from([b"a", b"<b>", b"\n", b"[", b"> ", b"<div>"]))
        data = unit * ((UPLOAD_LIMIT + draw(st.integers(-4, 4 * KiB))) // len(unit))
    else:
        data = draw(_PROSE | _HTML | _MARKDOWN).encode(
            draw(st.sampled_from(["utf-16", "latin-1", "utf-8-sig", "cp1252"])), "replace")
    # The extension matches the content or not (a .docx named .html, a PNG named .md ...).
    extension = draw(st.sampled_from([".docx", ".md", ".markdown", ".html", ".htm", ".txt",
                                      ".pdf", ".DOCX", ""]))
    stem = draw(st.sampled_from(["story", "a b", "../x", "é", ".hidden", "x" * 120]))
    return stem + extension, data


def test_generated_uploads_never_answer_5xx(fuzz_app: FastAPI) -> None:
    client = TestClient(fuzz_app)  # the module's lifespan is running; no second one

    @given(upload=_upload())
    @settings(max_examples=UPLOAD_EXAMPLES, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    def check(upload: tuple[str, bytes]) -> None:
        name, data = upload
        response = client.post("/api/v1/archive/files", files={"file": (name, data)})
        assert response.status_code < 500, (name, len(data), response.text[:300])
        if response.status_code >= 400:
            error = response.json()["error"]
            assert set(error) >= {"code", "message", "param"}
            assert "Traceback" not in error["message"]

    check()


def test_the_upload_fuzz_reaches_every_answer(fuzz_app: FastAPI) -> None:
    """The generators above do reach what they are for: one file of each kind."""
    client = TestClient(fuzz_app)
    answers = {
        name: client.post("/api/v1/archive/files", files={"file": (name, data)}).status_code
        for name, data in [
            ("ok.docx", crafted_docx()),
            ("bomb.docx", crafted_docx(spaces(8))),
            ("huge.md", b"a" * (UPLOAD_LIMIT + 1)),
            ("broken.docx", crafted_docx(b"<w:document")),
            ("image.md", b"\x89PNG\r\n\x1a\n" + bytes(16)),
            ("story.pdf", b"%PDF-1.4"),
        ]}
    assert answers == {"ok.docx": 201, "bomb.docx": 413, "huge.md": 413, "broken.docx": 422,
                       "image.md": 422, "story.pdf": 415}
