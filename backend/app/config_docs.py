"""CONFIGURATION.md and .env.example, generated from the settings' declarations.

``python -m app.config_docs`` (from ``backend/``) rewrites both files at the repository root;
``tests/test_config_docs.py`` fails when they differ from what this module renders.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from app.config import GROUPS, aliases

ROOT = Path(__file__).resolve().parents[2]

_INTRO = """\
# Configuration

Every setting is an environment variable (or a line of a `.env` file in the directory the server
starts in, i.e. `backend/` with `make serve`). Names are case-insensitive; `.env.example` lists
them all with their defaults. Token figures are model tokens, counted with the served model's
own tokenizer; times are in seconds unless the name says otherwise. A value out of bounds stops
the server at startup with a message naming the variable.

In code the settings are a tree of groups (`app/config.py`): each section below is one group
(`settings.model`, `settings.context`, ...) and each module receives only the groups it needs.
This file and `.env.example` are generated from those declarations: edit `app/config.py`, then
run `python -m app.config_docs` in `backend/`.
"""


def default_text(info: FieldInfo) -> str:
    """A field's default as the docs show it (``unset`` for ``None``)."""
    value = info.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    return ",".join(value) if isinstance(value, list) else str(value)


def _prose(model: type[BaseModel]) -> tuple[str, str]:
    """(first line, the rest) of a group's docstring, cleaned."""
    doc = inspect.cleandoc(model.__doc__ or "")
    first, _, rest = doc.partition("\n\n")
    return " ".join(first.split()), rest.strip()


def _split(model: type[BaseModel]) -> tuple[list[tuple[str, FieldInfo]], list[type[BaseModel]]]:
    """A group's own settings (environment name, field) and its subgroups."""
    own: list[tuple[str, FieldInfo]] = []
    nested: list[type[BaseModel]] = []
    for info in model.model_fields.values():
        extra = info.json_schema_extra
        if isinstance(extra, dict) and "env" in extra:
            own.append((str(extra["env"]), info))
        elif isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            nested.append(info.annotation)
    return own, nested


def _all_fields(model: type[BaseModel]) -> list[tuple[str, FieldInfo]]:
    """A group's settings and its subgroups', in declaration order."""
    own, nested = _split(model)
    return own + [field for child in nested for field in _all_fields(child)]


def _sections(model: type[BaseModel], depth: int) -> Iterator[tuple[int, type[BaseModel],
                                                                    list[tuple[str, FieldInfo]]]]:
    """(depth, group, its own settings) for a group and then each of its subgroups; a group
    with ``docs_one_table`` lists its subgroups' settings in its own table instead."""
    if getattr(model, "docs_one_table", False):
        yield depth, model, _all_fields(model)
        return
    own, nested = _split(model)
    yield depth, model, own
    for child in nested:
        yield from _sections(child, depth + 1)


def _all_sections() -> Iterator[tuple[int, type[BaseModel], list[tuple[str, FieldInfo]]]]:
    for model in GROUPS.values():
        yield from _sections(model, 2)


def _description(info: FieldInfo) -> str:
    """A setting's description, with the other names it is read from."""
    text = " ".join((info.description or "").split())
    names = aliases(info)
    if names:
        text += (" Also read from " + " and ".join(f"`{name}`" for name in names)
                 + " (the same setting; set only one).")
    return text


def render_configuration() -> str:
    """The text of CONFIGURATION.md."""
    parts = [_INTRO]
    for depth, model, fields in _all_sections():
        title: Any = getattr(model, "title", model.__name__)
        first, rest = _prose(model)
        parts.append(f"{'#' * depth} {title}\n\n{first}\n")
        if rest:
            parts.append(f"{rest}\n")
        rows = "".join(f"| `{env}` | `{default_text(info)}` | {_description(info)} |\n"
                       for env, info in fields)
        parts.append(f"| Variable | Default | Meaning |\n|---|---|---|\n{rows}")
    return "\n".join(parts)


def render_env_example() -> str:
    """The text of .env.example: every setting with its default (unset ones commented)."""
    lines = ["# Writer Assistant settings: copy to backend/.env and edit. See CONFIGURATION.md.",
             ""]
    for _depth, model, fields in _all_sections():
        lines += [f"# --- {getattr(model, 'title', model.__name__)} ---", ""]
        for env, info in fields:
            default = default_text(info)
            value = f"# {env}=" if default == "unset" else f"{env}={default}"
            lines += [f"# {_description(info)}", value, ""]
    return "\n".join(lines)


def main() -> None:
    """Rewrite CONFIGURATION.md and .env.example at the repository root."""
    (ROOT / "CONFIGURATION.md").write_text(render_configuration())
    (ROOT / ".env.example").write_text(render_env_example())


if __name__ == "__main__":
    main()
