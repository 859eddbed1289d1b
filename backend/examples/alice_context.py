"""Build the Alice example story context from the shared corpus.

The template (``alice_chapter2.template.json``) holds the author's part: plot elements and
characters for chapter 2. This script adds the story so far, read from
``../shared/corpus/carroll-alice.txt`` (chapter 1 by default), and prints the request body.

    python backend/examples/alice_context.py > /tmp/alice.json
    python backend/examples/alice_context.py --chapters 12 > /tmp/alice-all.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "alice_chapter2.template.json"
#: The corpus lives beside the project: <repo>/../shared/corpus.
CORPUS = HERE.parents[2] / "shared" / "corpus" / "carroll-alice.txt"

_HEADING = re.compile(r"^\s*CHAPTER ([IVXLC]+)\.?\s*(.*)$", re.MULTILINE)


def read_chapters(path: Path = CORPUS) -> list[dict[str, object]]:
    """Chapters of Alice as ``[{number, title, content}]``; paragraphs unwrapped, blank-line
    separated."""
    text = path.read_text(encoding="utf-8")
    headings = list(_HEADING.finditer(text))
    chapters = []
    for number, match in enumerate(headings, start=1):
        end = headings[number].start() if number < len(headings) else len(text)
        body = text[match.end():end]
        paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", body) if p.strip()]
        # the last chapter runs into the closing line of the file
        paragraphs = [p for p in paragraphs if not p.startswith("THE END")]
        chapters.append(
            {"number": number, "title": match.group(2).strip(), "content": "\n\n".join(paragraphs)}
        )
    return chapters


def build_request(chapters: int = 1, path: Path = CORPUS) -> dict[str, object]:
    """The template request with the first ``chapters`` chapters as the story so far."""
    request = json.loads(TEMPLATE.read_text(encoding="utf-8"))
    request["structured_context"]["chapters"] = read_chapters(path)[:chapters]
    if chapters > 1:
        request["title"] = None
        request["plot_point"] = "Continue the story after the last chapter."
    return request


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chapters", type=int, default=1, help="chapters of story so far")
    parser.add_argument("--corpus", type=Path, default=CORPUS, help="path of carroll-alice.txt")
    args = parser.parse_args()
    json.dump(build_request(args.chapters, args.corpus), sys.stdout, ensure_ascii=False, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
