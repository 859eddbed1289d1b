"""CONFIGURATION.md and .env.example list every setting, and nothing that is not one."""

import re
from pathlib import Path

from app.config import Settings

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = {name.upper() for name in Settings.model_fields}


def test_configuration_md_lists_every_setting():
    text = (ROOT / "CONFIGURATION.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z0-9_]+)` \|", text, re.MULTILINE))
    assert documented == SETTINGS


def test_env_example_lists_every_setting():
    text = (ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^#? ?([A-Z0-9_]+)=", text, re.MULTILINE))
    assert listed == SETTINGS


def test_configuration_md_defaults_match_the_code():
    text = (ROOT / "CONFIGURATION.md").read_text()
    for name, field in Settings.model_fields.items():
        row = re.search(rf"^\| `{name.upper()}` \| ([^|]*) \|", text, re.MULTILINE)
        assert row, name
        value = field.get_default(call_default_factory=True)
        default = "unset" if value is None else (
            ",".join(value) if isinstance(value, list) else str(value))
        assert row.group(1).strip().strip("`") == default, name
