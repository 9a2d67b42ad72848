"""The Files API's rules: who owns a file, what an upload must be, and file parts made text.

Ownership: a file belongs to the API key that uploaded it, recorded as `caller.owner`: a
managed key's id, else the hex sha256 of the static key sent (the key itself is never stored).
On an open server (no keys configured) every anonymous caller is the one owner `""`. Another
owner's file is answered exactly like a missing one, so ids cannot be probed across keys.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from seekserve.files.kinds import extract_text, kind_of
from seekserve.files.store import FileStore, Order, StoredFile
from seekserve.protocol.errors import InvalidRequestError, NoSuchFileError, PayloadTooLargeError
from seekserve.protocol.neutral import (
    ChatRequest,
    FilePart,
    Message,
    NeutralRequest,
    TextPart,
)
from seekserve.settings import FileSettings, LimitSettings
from seekserve.tenancy.identity import Caller
from seekserve.tenancy.store import Store

# What OpenAI's `POST /v1/files` accepts. Any of them may be used in a chat.
PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
MAX_FILENAME_CHARS = 255
MAX_LIST_LIMIT = 10_000


def frame(filename: str, text: str) -> str:
    """How a file's text stands in the prompt: between two marker lines that name it."""
    return f"[file: {filename}]\n{text}\n[end of file: {filename}]"


# Between a framed file and the text parts around it (parts are otherwise joined as they are).
PART_SEPARATOR = "\n\n"


class Files:
    """Uploads, listing, reading and deleting one caller's files, and `inline` for chats."""

    def __init__(self, store: Store, settings: FileSettings, limits: LimitSettings) -> None:
        self.store = FileStore(store)
        self.settings = settings
        self._limits = limits

    async def create(self, caller: Caller, *, filename: str, content_type: str | None,
                     data: bytes, purpose: str | None) -> StoredFile:
        check_purpose(purpose)
        assert purpose is not None
        name = clean_filename(filename)
        limit = self.settings.max_upload_bytes
        if len(data) > limit:
            raise file_too_large(limit)
        kind = kind_of(name, content_type, data)
        # Off the event loop: a large PDF takes seconds to parse.
        text = await asyncio.to_thread(extract_text, kind, name, data,
                                       self.settings.max_extracted_chars)
        return await self.store.add(owner=caller.owner, filename=name, purpose=purpose,
                                    kind=kind.name, content_type=kind.content_type, data=data,
                                    extracted=text,
                                    max_files=self.settings.max_files_per_owner)

    async def get(self, caller: Caller, file_id: str) -> StoredFile:
        stored = await self.store.get(caller.owner, file_id)
        if stored is None:
            raise no_such_file(file_id)
        return stored

    async def content(self, caller: Caller, file_id: str) -> tuple[StoredFile, bytes]:
        found = await self.store.content(caller.owner, file_id)
        if found is None:
            raise no_such_file(file_id)
        return found

    async def delete(self, caller: Caller, file_id: str) -> dict[str, Any]:
        if not await self.store.delete(caller.owner, file_id):
            raise no_such_file(file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    async def page(self, caller: Caller, *, purpose: str | None, limit: int, order: Order,
                   after: str | None) -> dict[str, Any]:
        """`GET /v1/files` in OpenAI's cursor-page shape."""
        rows, more = await self.store.page(caller.owner, purpose=purpose, limit=limit,
                                           order=order, after=after)
        data = [row.wire() for row in rows]
        return {"object": "list", "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None, "has_more": more}

    async def inline(self, req: NeutralRequest, caller: Caller) -> NeutralRequest:
        """`req` with every file part replaced by a text part holding the file's text as
        `frame` shows it, set off from neighbouring parts by a blank line:
        `[text, file, file]` reads "text\n\n[file: a.txt]\n...\n[end of file: a.txt]\n\n
        [file: b.pdf]\n...\n[end of file: b.pdf]".

        A file that is missing or another key's is a 400 naming the part; the text of one
        message stays within `limits.max_message_chars`, and of all files in the request
        within `files.max_request_chars`. A request without file parts is returned as is,
        without touching the store."""
        if not isinstance(req, ChatRequest):
            return req  # a text completion has no file parts
        refs = [part.file_id for m in req.messages for part in m.file_parts()]
        if not refs:
            return req
        found = await self.store.texts(caller.owner, refs)
        budget = self.settings.max_request_chars
        messages = list(req.messages)
        for i, message in enumerate(req.messages):
            if message.file_parts():
                messages[i], used = self._inline_message(message, found, budget)
                budget -= used
        return replace(req, messages=tuple(messages))

    def _inline_message(self, message: Message, found: dict[str, tuple[StoredFile, str]],
                        budget: int) -> tuple[Message, int]:
        assert isinstance(message.content, tuple)
        parts = message.content
        size = sum(len(p.text) for p in parts if isinstance(p, TextPart))
        used = 0
        out: list[TextPart | FilePart] = []
        for j, part in enumerate(parts):
            if isinstance(part, TextPart):
                out.append(part)
                continue
            hit = found.get(part.file_id)
            if hit is None:
                raise InvalidRequestError(
                    f"No such file: {part.file_id!r} (a file can be used only with the "
                    "API key that uploaded it).", param=part.param, code="file_not_found")
            stored, text = hit
            before = PART_SEPARATOR if j > 0 else ""
            # A file followed by a file is set off by the second one's separator alone.
            after = (PART_SEPARATOR if j < len(parts) - 1 and isinstance(parts[j + 1], TextPart)
                     else "")
            # Checked before the text is built, so a huge request costs no memory first.
            used += len(text)
            size += len(before) + len(frame(stored.filename, "")) + len(text) + len(after)
            at = part.param.removesuffix(".file.file_id").removesuffix(".file_id")
            if used > budget:
                raise InvalidRequestError(
                    f"The files in this request hold more than {self.settings.max_request_chars}"
                    f" characters of text (files.max_request_chars); {at}"
                    f" ({stored.filename}) goes over it.",
                    param=part.param, code="message_too_long")
            if size > self._limits.max_message_chars:
                raise InvalidRequestError(
                    f"{message.param} would have at least {size} characters with the text of "
                    f"{stored.filename} ({len(text)} characters) put in; "
                    f"limits.max_message_chars allows {self._limits.max_message_chars}.",
                    param=part.param, code="message_too_long")
            out.append(TextPart(before + frame(stored.filename, text) + after))
        return replace(message, content=tuple(out)), used


def check_purpose(purpose: str | None) -> None:
    if not purpose:
        raise InvalidRequestError(
            f"purpose is required: one of {', '.join(PURPOSES)}.", param="purpose",
            code="missing_required_parameter")
    if purpose not in PURPOSES:
        raise InvalidRequestError(
            f"Invalid value for purpose: {purpose!r}; expected one of {', '.join(PURPOSES)}.",
            param="purpose")


def clean_filename(filename: str) -> str:
    """The name without any directory part a client sent (browsers on Windows send paths)."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    if not name:
        raise InvalidRequestError("The file part needs a filename.", param="file",
                                  code="missing_required_parameter")
    if len(name) > MAX_FILENAME_CHARS:
        raise InvalidRequestError(
            f"The filename has {len(name)} characters; at most {MAX_FILENAME_CHARS} are allowed.",
            param="file")
    return name


def file_too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"The file is larger than files.max_upload_bytes ({limit} bytes).", param="file",
        code="file_too_large")


def no_such_file(file_id: str) -> NoSuchFileError:
    return NoSuchFileError(f"No such file: {file_id!r}.", param="file_id")
