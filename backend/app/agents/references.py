"""What a request refers to in its story: a chapter by number (or given as text) and a
character by name; tasks name them where they stand in the shared block."""

from __future__ import annotations

from dataclasses import dataclass, field

from app.agents.spec import TaskInput
from app.errors import UnknownReference
from app.schemas.context import StructuredContext


@dataclass(frozen=True)
class ChapterSource:
    """The chapter a request is about: ``where`` names it in the task (the chapter where it
    stands in the story block, or "the text below"); ``text`` its text; ``reference`` its
    context element id when it is in the story block."""

    where: str
    text: str
    reference: str | None = None
    summary: dict[str, object] = field(default_factory=dict)

    def task(self, instruction: str, label: str) -> TaskInput:
        """A task that refers to the chapter in place, with the quoting variant beside it.
        ``instruction`` is a ``str.format`` template with ``{where}``."""
        quoted = f"{instruction.format(where='the text below')}\n\n{label}:\n{self.text}"
        if self.reference is None:
            return TaskInput(quoted, summary=self.summary)
        return TaskInput(instruction.format(where=self.where), reference=self.reference,
                         inline=quoted, summary=self.summary)


def chapter_source(context: StructuredContext, number: int | None, text: str | None,
                   param: str) -> ChapterSource:
    """The chapter a request points at, by number (in the story block) or as text.

    Raises:
        UnknownReference: no chapter of that number in the context.
    """
    if number is None:
        return ChapterSource("the text below", text or "")
    chapter = context.find_chapter(number)
    if chapter is None:
        known = ", ".join(str(c.number) for c in context.chapters) or "none"
        raise UnknownReference(
            f"chapter {number} is not in structured_context.chapters (chapters given: {known}).",
            param=param,
        )
    index = context.chapters.index(chapter)
    return ChapterSource(f'chapter {number} as it stands above under "Story so far"',
                         chapter.content, f"chapters[{index}]", {"chapter_number": number})


def character_name(context: StructuredContext, name: str) -> str:
    """The name of the character ``name`` as the context spells it.

    Raises:
        UnknownReference: no such character in the context.
    """
    character = context.find_character(name)
    if character is None:
        known = ", ".join(c.character_name for c in context.character_contexts) or "none"
        raise UnknownReference(
            f"character '{name}' is not in structured_context.character_contexts "
            f"(characters given: {known}); add it there or fix the name.",
            param="character_name",
        )
    return character.character_name


def braces(text: str) -> str:
    """``text`` safe inside a ``str.format`` template (braces doubled)."""
    return text.replace("{", "{{").replace("}", "}}")
