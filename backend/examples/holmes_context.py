"""Build a second example story context: "A Scandal in Bohemia", from the shared corpus.

The first of *The Adventures of Sherlock Holmes* is told in three numbered parts (headed
``I.``, ``II.`` and ``III.`` inside the story); they become ``structured_context.chapters``,
read from ``../shared/corpus/doyle-adventures-of-sherlock-holmes.txt``. The author's part
(plot elements, characters, a request and a style instruction for the next part) is written
below, in the shape of ``alice_chapter2.template.json``. The script prints the request body of
``POST /api/v1/generate-chapter``.

Part I is about 5,000 SmolLM2 tokens, so ``--chapters 1`` (the default) makes a prompt of
about 5,700 tokens, close to Alice chapters 1-2 (about 6,000); parts I-II (about 10,600 tokens)
no longer fit the embedded model's 8,192-token window and are distilled or trimmed.

    python backend/examples/holmes_context.py > /tmp/holmes.json
    python backend/examples/holmes_context.py --chapters 2 > /tmp/holmes-2.json
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: The corpus lives beside the project: <repo>/../shared/corpus.
CORPUS = HERE.parents[2] / "shared" / "corpus" / "doyle-adventures-of-sherlock-holmes.txt"
#: The story's heading as the file spells it ("I. A SCANDAL IN BOHEMIA"), and its title.
STORY = "A SCANDAL IN BOHEMIA"
TITLE = "A Scandal in Bohemia"

#: A story heading: a Roman numeral, a full stop and an upper-case title on its own line.
_STORY_HEADING = re.compile(r"^([IVXLC]+)\.\s+([A-Z][A-Z’'\- ]+)\s*$", re.MULTILINE)
#: A part heading inside a story: a Roman numeral and a full stop alone on its line.
_PART_HEADING = re.compile(r"^([IVXLC]+)\.\s*$", re.MULTILINE)

#: The author's part, for part II (the story so far is part I): what the King asked, where
#: Irene Adler lives, what Holmes does next.
TEMPLATE: dict[str, object] = {
    "structured_context": {
        "system_instructions": [
            {"type": "style", "content": "Write in the manner of Arthur Conan Doyle: "
             "first-person narration by Dr. Watson in the past tense, precise Victorian prose, "
             "and Holmes explaining his deductions only after the fact.", "priority": "high"},
        ],
        "plot_elements": [
            {"type": "scene", "content": "Baker Street, the afternoon after the King's visit: "
             "Watson waits by the fire for Holmes, who left the house shortly after eight "
             "o'clock in the morning.", "priority": "high"},
            {"type": "plot_point", "content": "Holmes comes back disguised as a drunken-looking "
             "groom. He has spent the day among the ostlers of Serpentine Avenue and watched "
             "Briony Lodge, Irene Adler's house in St. John's Wood.", "priority": "high"},
            {"type": "plot_point", "content": "A handsome lawyer, Godfrey Norton of the Inner "
             "Temple, calls on Irene Adler; both drive off in haste to the Church of St. "
             "Monica, where Holmes is pulled in as the witness of their wedding.",
             "priority": "medium"},
            {"type": "conflict", "content": "The King of Bohemia is to marry Clotilde Lothman "
             "von Saxe-Meningen. Irene Adler holds a cabinet photograph of herself with the "
             "King and threatens to send it on the day the betrothal is made public, next "
             "Monday. Two burglaries and a waylaid luggage have failed to find it.",
             "priority": "high"},
            {"type": "world", "content": "London, March 1888. Holmes works from his rooms at "
             "221B Baker Street; Watson, now married and in practice again, visits him there.",
             "priority": "medium"},
            {"type": "foreshadowing", "content": "Holmes will ask Watson to stand outside "
             "Briony Lodge that evening and throw a plumber's smoke-rocket through the window "
             "at his signal.", "priority": "medium"},
            {"type": "theme", "content": "A woman's wit against the most perfect reasoning "
             "machine the world has seen.", "priority": "low"},
        ],
        "character_contexts": [
            {"character_id": "holmes", "character_name": "Sherlock Holmes",
             "current_state": "Engaged by the King to recover the photograph; has given "
             "himself a day to study Irene Adler and her house",
             "goals": "Find where Irene Adler keeps the photograph and get it before Monday",
             "personality": "Cold, precise reasoner; master of disguise; restless without a "
             "problem; dry humour",
             "relationships": {"Dr. Watson": "Old friend and former fellow lodger",
                               "Irene Adler": "An opponent he has not yet met"},
             "priority": "high"},
            {"character_id": "watson", "character_name": "Dr. Watson",
             "current_state": "Back at Baker Street at three o'clock as Holmes asked, waiting "
             "for him, deeply interested in the case",
             "personality": "Loyal, warm, admiring of Holmes, the narrator of the story",
             "background": "Army doctor, recently married, returned to civil practice",
             "priority": "high"},
            {"character_id": "irene_adler", "character_name": "Irene Adler",
             "current_state": "Living quietly at Briony Lodge, Serpentine Avenue; sings at "
             "concerts, drives out at five each day",
             "background": "Born in New Jersey in 1858; contralto, La Scala, prima donna of "
             "the Imperial Opera of Warsaw; retired from the operatic stage",
             "personality": "Beautiful, resolute, with the mind of the most resolute of men",
             "relationships": {"The King of Bohemia": "Former lover who wronged her",
                               "Godfrey Norton": "The man she loves"},
             "priority": "medium"},
            {"character_id": "king_of_bohemia", "character_name": "The King of Bohemia",
             "current_state": "Staying at the Langham under the name of Count Von Kramm, "
             "anxious for his marriage; has given Holmes a thousand pounds for expenses",
             "background": "Wilhelm Gottsreich Sigismond von Ormstein, Grand Duke of "
             "Cassel-Felstein and hereditary King of Bohemia",
             "personality": "Proud, impulsive, theatrical; came to Baker Street in a vizard "
             "mask",
             "priority": "medium"},
        ],
        "user_requests": [
            {"type": "instruction", "content": "Keep the part short: a few paragraphs that end "
             "with Holmes asking Watson for his help that evening.", "priority": "medium"},
        ],
        "metadata": {"title": "The Adventures of Sherlock Holmes: A Scandal in Bohemia",
                     "author": "Arthur Conan Doyle"},
    },
    "plot_point": "Holmes returns disguised as a groom and tells Watson how he watched Briony "
                  "Lodge and became the witness at Irene Adler's wedding.",
    "title": "A Scandal in Bohemia, II",
    "max_tokens": 300,
}


def _unwrap(body: str) -> str:
    """``body`` with each paragraph on one line (runs of whitespace made one space) and
    paragraphs separated by a blank line."""
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", body) if p.strip()]
    return "\n\n".join(paragraphs)


def read_parts(path: Path = CORPUS, story: str = STORY,
               title: str = TITLE) -> list[dict[str, object]]:
    """The numbered parts of ``story`` as ``[{number, title, content}]``, oldest first.

    ``story`` is the story's heading in the file (upper case, without its numeral). The story
    runs from its heading to the next story heading (or the end of the file); its parts are
    the lines holding only a Roman numeral and a full stop. Titles are "<title>, <part
    numeral>" ("A Scandal in Bohemia, II"), since the parts have none of their own.

    Raises:
        ValueError: the file has no story of that heading, or the story has no numbered parts.
    """
    text = path.read_text(encoding="utf-8")
    headings = list(_STORY_HEADING.finditer(text))
    index = next((i for i, m in enumerate(headings) if m.group(2).strip() == story), None)
    if index is None:
        raise ValueError(f"{path.name} has no story headed {story!r}")
    start = headings[index].end()
    end = headings[index + 1].start() if index + 1 < len(headings) else len(text)
    body = text[start:end]
    parts = list(_PART_HEADING.finditer(body))
    if not parts:
        raise ValueError(f"story {story!r} has no numbered parts")
    chapters = []
    for number, match in enumerate(parts, start=1):
        stop = parts[number].start() if number < len(parts) else len(body)
        chapters.append({"number": number, "title": f"{title}, {match.group(1)}",
                         "content": _unwrap(body[match.end():stop])})
    return chapters


def build_request(chapters: int = 1, path: Path = CORPUS) -> dict[str, object]:
    """The Holmes request body with the first ``chapters`` parts as the story so far.

    With more than one part the plot point asks to continue after the last one (the
    template's plot elements are written for part II)."""
    request = copy.deepcopy(TEMPLATE)
    request["structured_context"]["chapters"] = read_parts(path)[:chapters]
    if chapters > 1:
        request["title"] = None
        request["plot_point"] = "Continue the story after the last part."
    return request


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chapters", type=int, default=1, help="parts of story so far (1-3)")
    parser.add_argument("--corpus", type=Path, default=CORPUS,
                        help="path of doyle-adventures-of-sherlock-holmes.txt")
    args = parser.parse_args()
    json.dump(build_request(args.chapters, args.corpus), sys.stdout, ensure_ascii=False, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
