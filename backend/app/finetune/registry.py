"""The adapter registry: LoRA adapters served beside the base model, by name.

A registered adapter is a directory ``ADAPTERS_DIR/<name>/`` holding:

- ``adapter.gguf``: the GGUF LoRA adapter (a copy: the registry never points into a
  fine-tune's directory, which a run started again would change under the server);
- ``training.json``: its training record (:class:`app.finetune.record.TrainingRecord`), when
  it was registered from a fine-tune's directory;
- ``adapter.json``: the :class:`AdapterEntry` written when it was registered (its SHA-256,
  size, the base model it was made for).

Registering checks the adapter against the served base model
(:func:`app.finetune.export.check_adapter`) and writes the directory under a temporary name
first, then renames it, so a reader sees a whole entry or none. The registry is read from
disk on every lookup (one small JSON file), so adapters added or removed with the command
line while the server runs are seen by the next request. ``base`` is the base model itself
and is never a registered name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from app.errors import AdapterMismatch, InvalidAdapter, InvalidRequest, UnknownModel
from app.finetune.record import ADAPTER_FILE, RECORD_FILE, TrainingRecord, read_record
from app.llm.protocol import BASE_MODEL, LoraAdapter

logger = logging.getLogger(__name__)

#: The registration record in an adapter's directory.
ENTRY_FILE = "adapter.json"
#: An adapter name: a slug of lower-case letters, digits, ``-`` and ``_``, starting with a
#: letter or digit, at most 64 characters.
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_HASH_CHUNK = 1 << 20


class AdapterEntry(BaseModel):
    """What registering an adapter recorded (``adapter.json``)."""

    name: str
    sha256: str = Field(description="SHA-256 (hex) of adapter.gguf.")
    size_bytes: int = Field(description="Size of adapter.gguf in bytes.")
    lora_alpha: float = Field(description="The adapter's alpha (llama.cpp scales each pair "
                              "by alpha / rank).")
    architecture: str = Field(description="The base model's general.architecture.")
    base_model: str = Field(description="The base model's name as the adapter records it.")
    base_model_sha256: str = Field(description="SHA-256 (hex) of the base GGUF it was made "
                                   "for.")
    source: str = Field(description="The file or directory it was registered from.")
    created_at: datetime = Field(description="When it was registered (UTC).")


@dataclass(frozen=True)
class RegisteredAdapter:
    """One adapter of the registry: its ``entry``, its ``record`` (``None`` when it was
    registered from a bare GGUF file) and its ``path`` (the adapter.gguf)."""

    entry: AdapterEntry
    record: TrainingRecord | None
    path: Path

    @property
    def name(self) -> str:
        return self.entry.name

    def ref(self) -> LoraAdapter:
        """The adapter as a generation applies it."""
        return LoraAdapter(name=self.entry.name, path=self.path, sha256=self.entry.sha256)


def check_name(name: str) -> str:
    """``name`` if it can name an adapter (:data:`NAME_PATTERN`, not ``base``).

    Raises:
        InvalidRequest: it cannot (param ``name``).
    """
    if name == BASE_MODEL:
        raise InvalidRequest(f"{BASE_MODEL!r} is the base model itself; give the adapter "
                             "another name.", param="name")
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidRequest(
            f"{name!r} is not an adapter name: use 1-64 lower-case letters, digits, '-' and "
            "'_', starting with a letter or digit.", param="name")
    return name


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class AdapterRegistry:
    """The adapters registered in ``directory`` (``ADAPTERS_DIR``; created when the first
    one is added). Reads are safe from any thread; adding and removing are meant for one
    process at a time (the command line)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    # --- reading -------------------------------------------------------------------------
    def _read(self, name: str) -> RegisteredAdapter | None:
        """The entry named ``name``, or ``None`` when there is none or it is unreadable
        (logged): an entry without its adapter.gguf, or whose file changed size since it
        was registered, is not served."""
        folder = self.directory / name
        try:
            entry = AdapterEntry.model_validate_json(
                (folder / ENTRY_FILE).read_text(encoding="utf-8"))
            size = (folder / ADAPTER_FILE).stat().st_size
        except FileNotFoundError:
            return None
        except (OSError, ValidationError, ValueError) as error:
            logger.warning("adapter %s: unreadable registry entry (%s)", name, error)
            return None
        if size != entry.size_bytes or entry.name != name:
            logger.warning("adapter %s: adapter.gguf changed since it was registered; add it "
                           "again", name)
            return None
        record = None
        if (folder / RECORD_FILE).is_file():
            try:
                record = read_record(folder)
            except (OSError, ValidationError, ValueError) as error:
                logger.warning("adapter %s: unreadable training record (%s)", name, error)
        return RegisteredAdapter(entry, record, folder / ADAPTER_FILE)

    def registered(self) -> list[RegisteredAdapter]:
        """Every served adapter, by name."""
        if not self.directory.is_dir():
            return []
        found = (self._read(path.name) for path in sorted(self.directory.iterdir())
                 if path.is_dir() and NAME_PATTERN.fullmatch(path.name))
        return [adapter for adapter in found if adapter is not None]

    def names(self) -> list[str]:
        """The names a request's ``model`` may take: ``base``, then every adapter's."""
        return [BASE_MODEL, *(adapter.name for adapter in self.registered())]

    def get(self, name: str) -> RegisteredAdapter:
        """The adapter named ``name``.

        Raises:
            UnknownModel: none is registered by that name (``details.available`` lists the
                names there are).
        """
        adapter = self._read(name) if NAME_PATTERN.fullmatch(name) else None
        if adapter is None:
            available = self.names()
            raise UnknownModel(
                f"No model {name!r} here; use one of: {', '.join(available)}.",
                param="model", available=available)
        return adapter

    def resolve(self, name: str, base_sha256: str | None) -> LoraAdapter | None:
        """What a request's ``model`` names: ``None`` for ``base``, else the adapter,
        checked against the served base model's file SHA-256 (``base_sha256``; ``None``:
        unknown, not checked).

        Raises:
            UnknownModel: no such adapter.
            AdapterMismatch: it was made for another base model than the one served.
        """
        if name == BASE_MODEL:
            return None
        adapter = self.get(name)
        entry = adapter.entry
        if base_sha256 is not None and entry.base_model_sha256 != base_sha256:
            raise AdapterMismatch(
                f"The adapter {name!r} was made for another base model ({entry.base_model}, "
                f"sha256 {entry.base_model_sha256[:12]}) than the one served (sha256 "
                f"{base_sha256[:12]}); register one trained on this base.",
                param="model", adapter_base_sha256=entry.base_model_sha256,
                base_sha256=base_sha256)
        return adapter.ref()

    # --- changing ------------------------------------------------------------------------
    def add(self, name: str, source: Path, base_gguf: Path, *,
            replace: bool = False) -> RegisteredAdapter:
        """Register the adapter at ``source`` as ``name``, after checking it against the base
        model ``base_gguf``. ``source`` is a GGUF LoRA adapter file, or a fine-tune's
        directory (its ``adapter.gguf``, named by its ``training.json`` when it has one,
        and that record). ``replace``: an adapter of that name is replaced (else refused).

        Raises:
            InvalidRequest: a bad name, a name taken (without ``replace``), or no adapter at
                ``source``.
            InvalidAdapter: the file is not a GGUF LoRA adapter.
            AdapterMismatch: it was made for another base model.
            ModelUnavailable: ``base_gguf`` is missing or not GGUF.
        """
        from app.finetune.export import check_adapter  # reads GGUF metadata (numpy, gguf)

        check_name(name)
        record: TrainingRecord | None = None
        if source.is_dir():
            if (source / RECORD_FILE).is_file():
                try:
                    record = read_record(source)
                except (ValidationError, ValueError) as error:
                    raise InvalidAdapter(f"{source / RECORD_FILE} is not a training "
                                         "record.") from error
            gguf_file = source / (record.adapter_gguf if record else ADAPTER_FILE)
        else:
            gguf_file = source
        if not gguf_file.is_file():
            raise InvalidRequest(f"No adapter at {gguf_file}: give a GGUF LoRA adapter file "
                                 "or a fine-tune's directory.", param="path")
        target = self.directory / name
        if target.exists() and not replace:
            raise InvalidRequest(f"An adapter named {name!r} is registered already; remove "
                                 "it first or replace it.", param="name")
        info = check_adapter(gguf_file, base_gguf)
        self.directory.mkdir(parents=True, exist_ok=True)
        staging = self.directory / f".adding-{name}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            shutil.copyfile(gguf_file, staging / ADAPTER_FILE)
            if record is not None:
                (staging / RECORD_FILE).write_text(record.model_dump_json(indent=2) + "\n",
                                                   encoding="utf-8")
            entry = AdapterEntry(
                name=name, sha256=_sha256(staging / ADAPTER_FILE),
                size_bytes=(staging / ADAPTER_FILE).stat().st_size, lora_alpha=info.alpha,
                architecture=info.architecture, base_model=info.base_name,
                base_model_sha256=info.base_sha256, source=str(source.resolve()),
                created_at=datetime.now(UTC))
            (staging / ENTRY_FILE).write_text(entry.model_dump_json(indent=2) + "\n",
                                              encoding="utf-8")
            if target.exists():
                retired = self.directory / f".removing-{name}-{uuid.uuid4().hex[:8]}"
                target.rename(retired)
                shutil.rmtree(retired, ignore_errors=True)
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        logger.info("adapter %s registered from %s (sha256 %s)", name, source,
                    entry.sha256[:12])
        return RegisteredAdapter(entry, record, target / ADAPTER_FILE)

    def remove(self, name: str) -> RegisteredAdapter:
        """Unregister ``name`` (its directory is deleted). A server that loaded it keeps it
        in memory but serves it no more. Returns what was removed.

        Raises:
            UnknownModel: no adapter by that name.
        """
        adapter = self.get(name)
        retired = self.directory / f".removing-{name}-{uuid.uuid4().hex[:8]}"
        (self.directory / name).rename(retired)
        shutil.rmtree(retired, ignore_errors=True)
        return adapter


def entry_json(adapter: RegisteredAdapter) -> str:
    """The adapter's entry and record as indented JSON (for the command line)."""
    return json.dumps({**adapter.entry.model_dump(mode="json"),
                       "training": adapter.record.model_dump(mode="json")
                       if adapter.record else None}, indent=2)
