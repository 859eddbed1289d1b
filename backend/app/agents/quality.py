"""Whether an answer says something: content checks on top of the grammar and the schema.

On the embedded model a JSON agent can return valid JSON that says nothing (an editor's
``{"issue": "1234567890", "suggestion": "1234567890"}``, a rater's opinion of ``"); "``) and
the writer can answer as a chat assistant instead of writing the chapter ("I'm here to help
with the chapter's prose...") or loop on one sentence until ``max_tokens``. These checks name
such answers so that the runner can retry or repair them. They are pure functions of the text.

- :func:`check_output`: a validated JSON output (a model of ``app.agents.outputs``) against
  per-field rules; an empty list means useful.
- :func:`check_prose`: free text (a chapter) for a repetition loop and an assistant's
  preamble, with the offsets to cut them at; :func:`repair_prose` cuts them and says whether
  what remains is still useful.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any, NamedTuple

from pydantic import BaseModel

from app.agents.outputs import (
    ChapterOutline,
    CharacterDetails,
    CharacterReaction,
    EditorSuggestion,
    RaterFeedback,
)


class Rule(StrEnum):
    """Why an answer (or one of its fields) is not useful."""

    no_letters = "no_letters"  # no letter at all: '"); "', '1234567890', '...'
    digit_run = "digit_run"  # a run of DIGIT_RUN or more digits: '1234567890'
    prompt_copy = "prompt_copy"  # a field name, a schema text or the instruction, copied
    placeholder = "placeholder"  # 'string', 'text', 'N/A', 'TODO', 'lorem ipsum'...
    too_short = "too_short"  # fewer words than the field's floor (FLOORS)
    same_in_fields = "same_in_fields"  # every text field of an item says the same
    same_items = "same_items"  # every item of a list is the same
    loop = "loop"  # prose repeating itself (a phrase, a sentence, a character run)
    preamble = "preamble"  # prose opening as a chat assistant instead of the text asked for


@dataclass(frozen=True)
class Problem:
    """One reason an answer is not useful: where (``path``, e.g. ``suggestions[0].issue``, or
    ``text`` for prose), which rule and a short explanation quoting the value."""

    path: str
    rule: Rule
    detail: str

    def __str__(self) -> str:
        return f"{self.path}: {self.detail}"


def describe(problems: Sequence[Problem], limit: int = 3) -> str:
    """The first ``limit`` problems in one line, e.g. for a retry's note to the model."""
    shown = "; ".join(str(problem) for problem in problems[:limit])
    more = len(problems) - limit
    return shown + (f"; and {more} more" if more > 0 else "")


# --- JSON outputs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Floor:
    """The least a text field must hold: ``words`` (runs of letters or digits) and, with
    ``letters``, at least one letter (off for fields where a number is an answer, an age)."""

    words: int
    letters: bool = True


#: Floors per output model field (the model class that declares the field). How they were
#: chosen: the shortest answer an author could act on, checked against the good answers of
#: tests/agents/test_quality.py (written like the model's better answers). An issue or a fix
#: must name what and where ("Flat opening", "Start with a sound.": 2-3 words); a rater's
#: opinion is a sentence; a character's actions, sensations and thoughts are phrases, while an
#: emotion, a line of dialog ("Help!"), a name, a title or a fear may be one word; sheet
#: paragraphs and outline summaries are asked as sentences. Numbers and enums (priority,
#: score, number) are exempt: the grammar already bounds them. Fields not listed get
#: DEFAULT_FLOOR.
FLOORS: Mapping[tuple[type[BaseModel], str], Floor] = {
    (EditorSuggestion, "issue"): Floor(2),
    (EditorSuggestion, "suggestion"): Floor(3),
    (RaterFeedback, "opinion"): Floor(5),
    (RaterFeedback, "suggestions"): Floor(3),
    (CharacterReaction, "actions"): Floor(2),
    (CharacterReaction, "dialog"): Floor(1),
    (CharacterReaction, "physicalSensations"): Floor(2),
    (CharacterReaction, "emotions"): Floor(1),
    (CharacterReaction, "internalMonologue"): Floor(3),
    (CharacterDetails, "name"): Floor(1),
    (CharacterDetails, "age"): Floor(1, letters=False),
    (CharacterDetails, "appearance"): Floor(4),
    (CharacterDetails, "personality"): Floor(3),
    (CharacterDetails, "background"): Floor(4),
    (CharacterDetails, "motivations"): Floor(3),
    (CharacterDetails, "fears"): Floor(1),
    (ChapterOutline, "title"): Floor(1),
    (ChapterOutline, "summary"): Floor(6),
}
DEFAULT_FLOOR = Floor(1)

#: Digits in a row that no field of a story answer needs (a year has 4).
DIGIT_RUN = 5
#: A value that is a piece of the instruction this long or longer (in words) is a copy of it.
COPY_WORDS = 3
#: What a model writes where it has nothing to say (normalized: lower case, words only).
PLACEHOLDERS = frozenset({
    "string", "text", "value", "example", "sample", "placeholder", "none", "null", "nil",
    "n a", "na", "tbd", "todo", "undefined", "unknown", "lorem ipsum", "etc", "xxx", "foo",
    "bar", "test", "your text here", "insert text here", "description",
})
_ARTICLES = frozenset({"a", "an", "the", "your", "my", "its"})

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
_LETTER = re.compile(r"[^\W\d_]")
_DIGITS = re.compile(rf"\d{{{DIGIT_RUN},}}")
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")


def normalized(text: str) -> str:
    """Lower case, words only, one space between them."""
    return " ".join(word.lower() for word in _WORD.findall(text))


def word_count(text: str) -> int:
    return len(_WORD.findall(text))


def _core(text: str) -> str:
    """``normalized`` without leading articles and trailing numbers ("the issue 1" ->
    "issue"), to recognise a field name used as a value."""
    words = normalized(text).split()
    while words and words[0] in _ARTICLES:
        words.pop(0)
    while words and words[-1].isdigit():
        words.pop()
    return " ".join(words)


def _quote(value: str, limit: int = 40) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


class _Echoes:
    """What a value must not merely repeat: the output schema's own words (field names,
    titles, descriptions, enum values) and the instruction (any piece of it of COPY_WORDS
    words or more)."""

    def __init__(self, model: type[BaseModel], prompt_text: str) -> None:
        self.schema: set[str] = set()
        self._collect(model.model_json_schema())
        self.prompt = f" {normalized(prompt_text)} "

    def _collect(self, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "properties" and isinstance(value, dict):
                    for name in value:
                        self.schema.add(_core(_CAMEL.sub(" ", name)))
                if key in ("title", "description") and isinstance(value, str):
                    self.schema.add(_core(_CAMEL.sub(" ", value)))
                if key in ("enum", "const"):
                    for item in value if isinstance(value, list) else [value]:
                        if isinstance(item, str):
                            self.schema.add(_core(item))
                self._collect(value)
        elif isinstance(node, list):
            for item in node:
                self._collect(item)

    def copied(self, value: str) -> str | None:
        """What ``value`` copies, or ``None``."""
        core = _core(value)
        if core and core in self.schema:
            return "the answer's own field name or schema text"
        text = normalized(value)
        if len(text.split()) >= COPY_WORDS and f" {text} " in self.prompt:
            return "a piece of the instruction"
        return None


def check_output(output: BaseModel, prompt_text: str = "") -> list[Problem]:
    """What makes a validated JSON output useless; empty when it is useful.

    Every text field is checked for: no letters; a run of DIGIT_RUN or more digits; a copy of
    a field name or the schema's text ("issue" as an issue) or of the instruction (a piece of
    ``prompt_text`` of COPY_WORDS words or more); a placeholder ("string", "N/A"); fewer words
    than its FLOORS entry. Then every object whose text fields (two or more) all say the same,
    and every list of two or more items that are all the same.

    ``prompt_text``: the agent's instruction, ``TaskInput.text`` (not the story: quoting it
    may be an answer).
    """
    echoes = _Echoes(type(output), prompt_text)
    problems: list[Problem] = []
    _check_model(output, "", echoes, problems)
    return problems


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _check_model(model: BaseModel, path: str, echoes: _Echoes,
                 problems: list[Problem]) -> None:
    texts: list[str] = []  # the object's own text values, for same_in_fields
    for name in type(model).model_fields:
        value = getattr(model, name)
        where = _join(path, name)
        floor = FLOORS.get((_declaring(type(model), name), name), DEFAULT_FLOOR)
        if isinstance(value, Enum):
            continue  # the grammar allows only its values
        if isinstance(value, str):
            problems.extend(_check_text(value, where, floor, echoes))
            texts.append(value)
        elif isinstance(value, BaseModel):
            _check_model(value, where, echoes, problems)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, str):
                    problems.extend(_check_text(item, f"{where}[{index}]", floor, echoes))
                    texts.append(item)
                elif isinstance(item, BaseModel):
                    _check_model(item, f"{where}[{index}]", echoes, problems)
            if len(value) >= 2 and len({_fingerprint(item) for item in value}) == 1:
                problems.append(Problem(where, Rule.same_items,
                                        f"all {len(value)} items are the same"))
    if len(texts) >= 2 and len({normalized(text) for text in texts}) == 1:
        problems.append(Problem(path or "answer", Rule.same_in_fields,
                                f"every text field says {_quote(texts[0])}"))


def _declaring(model: type[BaseModel], name: str) -> type[BaseModel]:
    """The class whose own annotations declare ``name`` (FLOORS keys on it)."""
    for klass in model.__mro__:
        if name in getattr(klass, "__annotations__", {}) and issubclass(klass, BaseModel):
            return klass
    return model


def _fingerprint(item: Any) -> str:
    if isinstance(item, BaseModel):
        return repr(sorted((k, normalized(v) if isinstance(v, str) else repr(v))
                           for k, v in item.model_dump().items()))
    return normalized(item) if isinstance(item, str) else repr(item)


def _check_text(value: str, path: str, floor: Floor, echoes: _Echoes) -> Iterator[Problem]:
    shown = _quote(value)
    if floor.letters and not _LETTER.search(value):
        yield Problem(path, Rule.no_letters, f"{shown} has no letters")
        return
    if _DIGITS.search(value):
        yield Problem(path, Rule.digit_run, f"{shown} holds a run of {DIGIT_RUN}+ digits")
    if normalized(value) in PLACEHOLDERS:
        yield Problem(path, Rule.placeholder, f"{shown} is a placeholder")
        return
    if copied := echoes.copied(value):
        yield Problem(path, Rule.prompt_copy, f"{shown} copies {copied}")
        return
    words = word_count(value)
    if words < floor.words:
        yield Problem(path, Rule.too_short,
                      f"{shown} has {words} word{'s' * (words != 1)}, fewer than {floor.words}")


# --- prose ---------------------------------------------------------------------------------

#: Fewest words a chapter (or a revision, an expansion) must keep to be useful.
MIN_PROSE_WORDS = 30
#: A loop: from some word on, every 4-word sequence repeats one seen at most LOOP_WINDOW
#: words before, for at least LOOP_MIN_WORDS words and twice the distance back (so a
#: passage said twice is not a loop; three times, or one 24-word passage twice, is).
LOOP_NGRAM = 4
LOOP_WINDOW = 120
LOOP_MIN_WORDS = 8
LOOP_MAX_NEEDED = 24
#: Breaks of up to this many words in a repeat still count as one loop (a word changed).
LOOP_SLACK = LOOP_NGRAM
#: A sentence or line (of 3+ words) said this many times is a loop wherever the copies are.
SENTENCE_REPEATS = 3
#: The same 1-4 characters this many times in a row ("!!!!!!!!!!!!", "hahaha...").
CHAR_REPEATS = 12
#: Sentences of an assistant's preamble that may be cut (beyond: the whole answer is talk).
PREAMBLE_SENTENCES = 4

#: How an assistant opens instead of writing the text asked for.
_OPENER = re.compile(
    r"(?:sure|certainly|of course|absolutely|okay|ok|alright|all right|great|hello|hi|hey"
    r"|thank you|thanks|yes|no problem|happy to help"
    r"|as an ai|as a language model|as an assistant|as your (?:\w+ )?assistant"
    r"|i(?:'m|’m| am) (?:here|happy|glad|delighted|thrilled|excited|pleased|going to|writing"
    r"|an ai|a language)"
    r"|i(?:'d|’d| would) (?:be |love )?(?:happy|glad|love|like)"
    r"|i can (?:help|write|certainly|do)"
    r"|i(?:'ll|’ll| will) (?:write|help|guide|continue|create|start|begin|now|give|provide)"
    r"|here(?:'s|’s| is| are)|below is|the following"
    r"|(?:in )?(?:this|the (?:last|next|previous|following|new)) (?:chapter|story|part)"
    r"|this is (?:the|a|my) (?:\w+ )?(?:chapter|story|continuation)"
    r"|the story so far|let(?:'s|’s| me| us)|write chapter|revise|expand)\b",
    re.IGNORECASE)
#: An assistant saying what it does with the text ("In the middle of the story, I'll continue
#: to write..."): with a _META word in the same sentence, an opener too.
_DOING = re.compile(
    r"\b(?:(?:i|we)(?:'ll|’ll| will|'ve|’ve| have| am going to| should| could| can| shall)? "
    r"(?:continue[sd]?|write|written|writing|begin|start|expand(?:ed)?|revise[sd]?|repeat)"
    r"|let(?:'s|’s| us))\b", re.IGNORECASE)
#: How an assistant's talk goes on after its opener.
_FOLLOW = re.compile(
    r"(?:i(?:'ll|’ll|'m|’m| will| am| hope| can)|we(?:'ll|’ll| will| can)|you(?:'ll|’ll| will"
    r"| can| may)?|your|this (?:is|chapter|story|continues)|it(?:'s|’s| is) (?:a|my|the)"
    r"|enjoy|hope|please|feel free)\b",
    re.IGNORECASE)
#: Talk about the text rather than the text (a sentence after the opener naming these).
_META = re.compile(
    r"\b(?:chapters?|story(?:'s|’s)?|narrative|narrator|paragraphs?|prose|author|reader|greeting"
    r"|comments?|heading|instructions?)\b", re.IGNORECASE)
#: A chapter heading: where the text starts, whatever came before.
_HEADING = re.compile(r"[#*_\s]*chapter\s+\w+\s*(?:[:.\-\u2013\u2014]|$)",
                      re.IGNORECASE | re.MULTILINE)
_LEAD = re.compile(r"[\s*#>_`-]*")  # markdown before the first word (not quotes: dialog)
_SENTENCE_END = re.compile(r"[.!?:…]+[\"'”’)*_]*(?=\s|$)|\n")
_CHAR_LOOP = re.compile(rf"(\S{{1,4}}?)\1{{{CHAR_REPEATS - 1},}}")


@dataclass(frozen=True)
class ProseVerdict:
    """What :func:`check_prose` found.

    ``loop_start``: the offset where a loop's second copy begins (cut there to keep one
    copy); ``loop_unit`` the repeated text. ``preamble`` the assistant's talk found at the
    start; ``preamble_end`` the offset where the prose starts after it, or ``None`` when it
    cannot be cut off (nothing but talk follows). ``words``: words in the text. ``problems``:
    what makes it useless as it stands (``ok`` when none).
    """

    words: int
    loop_start: int | None = None
    loop_unit: str = ""
    preamble: str = ""
    preamble_end: int | None = None
    problems: tuple[Problem, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


class Repaired(NamedTuple):
    """What :func:`repair_prose` made: the text, what it cut (``notes``, empty when nothing)
    and whether the text is useful (:func:`check_prose` finds nothing)."""

    text: str
    notes: tuple[str, ...]
    useful: bool


def check_prose(text: str, min_words: int = MIN_PROSE_WORDS) -> ProseVerdict:
    """Free text checked for no letters, a repetition loop, an assistant's preamble and fewer
    than ``min_words`` words."""
    words = word_count(text)
    problems: list[Problem] = []
    if not _LETTER.search(text):
        problems.append(Problem("text", Rule.no_letters, f"{_quote(text)} has no letters"))
        return ProseVerdict(words, problems=tuple(problems))
    loop = find_loop(text)
    if loop is not None:
        start, unit = loop
        problems.append(Problem("text", Rule.loop,
                                f"repeats {_quote(unit)} from offset {start}"))
    preamble, end = find_preamble(text)
    if preamble:
        fate = (f"prose starts at offset {end}" if end is not None
                else "no prose follows it")
        problems.append(Problem("text", Rule.preamble,
                                f"opens as an assistant ({_quote(preamble)}); {fate}"))
    if words < min_words:
        problems.append(Problem("text", Rule.too_short,
                                f"{words} words, fewer than {min_words}"))
    return ProseVerdict(words, loop[0] if loop else None, loop[1] if loop else "",
                        preamble, end, tuple(problems))


def repair_prose(text: str, min_words: int = MIN_PROSE_WORDS) -> Repaired:
    """Cut a loop (keeping its first copy) and a removable preamble; ``useful`` when what
    remains passes :func:`check_prose` (a preamble with nothing after it, or too little
    left, is not)."""
    notes: list[str] = []
    for _ in range(3):  # a cut may reveal another loop or preamble; a few rounds suffice
        verdict = check_prose(text, min_words)
        start, end = 0, len(text)
        if verdict.preamble and verdict.preamble_end is not None:
            start = verdict.preamble_end
            notes.append(f"cut the assistant's preamble {_quote(verdict.preamble)}")
        if verdict.loop_start is not None and verdict.loop_start > start:
            end = _sentence_cut(text, start, verdict.loop_start)
            notes.append(f"cut a loop repeating {_quote(verdict.loop_unit)} "
                         f"({len(text) - end} characters)")
        if (start, end) == (0, len(text)):
            break
        text = text[start:end].strip()
    return Repaired(text, tuple(notes), check_prose(text, min_words).ok)


def _sentence_cut(text: str, start: int, cut: int) -> int:
    """``cut``, moved back to the end of the last whole sentence before it when that keeps
    most of ``text[start:cut]``."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text, start, cut)]
    if ends and ends[-1] - start >= (cut - start) // 2:
        return ends[-1]
    return cut


def find_loop(text: str) -> tuple[int, str] | None:
    """Where ``text`` starts repeating itself, and what it repeats: ``(offset, unit)``, the
    offset being where the second copy starts (the earliest of the rules below), or
    ``None``.

    Rules: a run of words whose every LOOP_NGRAM-word sequence was said at most LOOP_WINDOW
    words before, long enough (see LOOP_MIN_WORDS); a sentence or line of 3+ words said
    SENTENCE_REPEATS times; a unit of 1-4 characters CHAR_REPEATS times in a row.
    """
    found = [hit for hit in (_ngram_loop(text), _sentence_loop(text), _char_loop(text))
             if hit is not None]
    return min(found) if found else None


def _ngram_loop(text: str) -> tuple[int, str] | None:
    matches = list(_WORD.finditer(text))
    words = [m.group().lower() for m in matches]
    n = LOOP_NGRAM
    last_seen: dict[tuple[str, ...], int] = {}
    run_start = run_end = back = -1  # the current run of repeated positions
    for i in range(len(words) - n + 1):
        gram = tuple(words[i:i + n])
        before = last_seen.get(gram)
        last_seen[gram] = i
        if before is None or i - before > LOOP_WINDOW:
            continue
        if run_start >= 0 and i - run_end <= LOOP_SLACK:
            run_end = i
        else:
            run_start, run_end, back = i, i, i - before
        covered = run_end - run_start + n
        if covered >= max(LOOP_MIN_WORDS, min(2 * back, LOOP_MAX_NEEDED)):
            offset = matches[run_start].start()
            first = matches[run_start - back].start()
            return offset, text[first:offset].strip()
    return None


def _sentence_loop(text: str) -> tuple[int, str] | None:
    seen: Counter[str] = Counter()
    second: dict[str, int] = {}
    position = 0
    for match in [*_SENTENCE_END.finditer(text), None]:
        end = match.end() if match else len(text)
        sentence = text[position:end]
        key = normalized(sentence)
        offset = position + len(sentence) - len(sentence.lstrip())
        position = end
        if len(key.split()) < 3:
            continue
        seen[key] += 1
        if seen[key] == 2:
            second[key] = offset
        if seen[key] == SENTENCE_REPEATS:
            return second[key], sentence.strip()
    return None


def _char_loop(text: str) -> tuple[int, str] | None:
    match = _CHAR_LOOP.search(text)
    if match is None:
        return None
    return match.start() + len(match.group(1)), match.group(1)


def find_preamble(text: str) -> tuple[str, int | None]:
    """An assistant's talk at the start of ``text``: ``(preamble, prose_start)``; ``("",
    None)`` when it opens with the text itself, and ``prose_start`` ``None`` when nothing but
    talk follows (or more than PREAMBLE_SENTENCES sentences of it)."""
    lead = _LEAD.match(text)
    position = lead.end() if lead else 0
    if not _opener(text, position):
        return "", None
    for count in range(PREAMBLE_SENTENCES):
        if count and not _talk(text, position):
            return text[:position].strip(), position
        end = _SENTENCE_END.search(text, position)
        if end is None:
            return text.strip(), None
        position = end.end()
        while position < len(text) and text[position].isspace():
            position += 1
        if position >= len(text):
            return text.strip(), None
    if _talk(text, position):
        return text[:position].strip(), None
    return text[:position].strip(), position


def _opener(text: str, position: int) -> bool:
    """Whether the sentence at ``position`` opens as an assistant."""
    if _OPENER.match(text, position):
        return True
    end = _SENTENCE_END.search(text, position)
    sentence = text[position:end.end() if end else len(text)]
    return bool(_DOING.search(sentence) and _META.search(sentence))


def _talk(text: str, position: int) -> bool:
    """Whether the sentence at ``position``, after an assistant's opener, is more talk."""
    if _HEADING.match(text, position):
        return False
    if _OPENER.match(text, position) or _FOLLOW.match(text, position):
        return True
    end = _SENTENCE_END.search(text, position)
    return bool(_META.search(text, position, end.end() if end else len(text)))
