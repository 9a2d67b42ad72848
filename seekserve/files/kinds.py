"""What an uploaded file is (by name, content type and its first bytes) and the text it holds.

Pure functions, run once per upload (in a worker thread: a large PDF takes a while). Every
refusal is a 400 naming the `file` field and saying what would be accepted.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from pathlib import PurePosixPath

from pypdf import PasswordType, PdfReader
from pypdf.errors import DependencyError

from seekserve.protocol.errors import InvalidRequestError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileKind:
    name: str
    content_type: str  # what GET /v1/files/{id}/content answers with, whatever the client sent


TEXT = FileKind("text", "text/plain; charset=utf-8")
MARKDOWN = FileKind("markdown", "text/markdown; charset=utf-8")
JSON = FileKind("json", "application/json")
JSONL = FileKind("jsonl", "application/jsonl")
CSV = FileKind("csv", "text/csv; charset=utf-8")
TSV = FileKind("tsv", "text/tab-separated-values; charset=utf-8")
PDF = FileKind("pdf", "application/pdf")

_BY_EXTENSION = {
    ".txt": TEXT, ".text": TEXT, ".md": MARKDOWN, ".markdown": MARKDOWN, ".json": JSON,
    ".jsonl": JSONL, ".csv": CSV, ".tsv": TSV, ".pdf": PDF,
}
_BY_CONTENT_TYPE = {
    "text/markdown": MARKDOWN, "text/x-markdown": MARKDOWN, "application/json": JSON,
    "application/jsonl": JSONL, "application/x-ndjson": JSONL, "text/csv": CSV,
    "text/tab-separated-values": TSV, "application/pdf": PDF,
}
SUPPORTED = ("UTF-8 text (.txt, or any text/* content type), Markdown (.md, .markdown), "
             "JSON (.json), JSON Lines (.jsonl), CSV (.csv), TSV (.tsv) and PDF (.pdf)")
# The PDF header may follow a little junk; readers (pypdf too) look this far for it.
_PDF_MAGIC = b"%PDF-"
_PDF_HEADER_WINDOW = 1024


def _invalid(message: str) -> InvalidRequestError:
    return InvalidRequestError(message, param="file", code="invalid_file")


def kind_of(filename: str, content_type: str | None, data: bytes) -> FileKind:
    """The kind by extension first (clients often send a generic content type), then by
    content type; PDF bytes are a PDF whatever the name says, and a `.pdf` must be one."""
    is_pdf = _PDF_MAGIC in data[:_PDF_HEADER_WINDOW]
    media = (content_type or "").split(";", 1)[0].strip().lower()
    kind = _BY_EXTENSION.get(PurePosixPath(filename).suffix.lower())
    if kind is None:
        kind = _BY_CONTENT_TYPE.get(media) or (TEXT if media.startswith("text/") else None)
    if kind is None and is_pdf:
        kind = PDF
    if kind is None:
        shown = f" ({media})" if media else ""
        raise InvalidRequestError(
            f"{filename}{shown} is not a supported file type; supported: {SUPPORTED}.",
            param="file", code="unsupported_file_type")
    if kind is PDF and not is_pdf:
        raise _invalid(f"{filename} is not a PDF: it has no %PDF- header.")
    return kind


def extract_text(kind: FileKind, filename: str, data: bytes, max_chars: int) -> str:
    """The text a chat sees; a 400 when there is none, or more than `max_chars`."""
    if not data:
        raise _invalid(f"{filename} is empty.")
    text = _pdf_text(filename, data, max_chars) if kind is PDF else _utf8_text(filename, data)
    if len(text) > max_chars:
        raise _invalid(f"{filename} has {len(text)} characters of text; "
                       f"files.max_extracted_chars allows {max_chars}.")
    if kind is JSON:
        _check_json(filename, text)
    elif kind is JSONL:
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                _check_json(filename, line, line_number=number)
    return text


def _utf8_text(filename: str, data: bytes) -> str:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _invalid(
            f"{filename} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start} "
            "is invalid): binary files are not supported; save text as UTF-8.") from None
    # Valid UTF-8 can still be binary; PostgreSQL text cannot hold NUL either.
    if "\x00" in text:
        raise _invalid(f"{filename} contains NUL bytes: binary files are not supported.")
    return text


def _check_json(filename: str, text: str, *, line_number: int | None = None) -> None:
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        where = (f"line {line_number}" if line_number is not None
                 else f"line {exc.lineno} column {exc.colno}")
        raise _invalid(f"{filename} is not valid JSON at {where}: {exc.msg}.") from None
    except RecursionError:
        where = f" at line {line_number}" if line_number is not None else ""
        raise _invalid(f"{filename} is not usable JSON{where}: it is nested too deeply.") from None


def _pdf_text(filename: str, data: bytes, max_chars: int) -> str:
    """Every page's text layer, pages separated by a blank line."""
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not _opens_without_password(reader):
            raise _invalid(f"{filename} is an encrypted PDF; upload it without a password.")
        pages: list[str] = []
        total = 0
        for page in reader.pages:
            text = _storable(page.extract_text() or "").strip()
            total += len(text)
            if total > max_chars:  # stop early: the rest of a huge PDF need not be read
                raise _invalid(f"{filename} has more than {max_chars} characters of text; "
                               f"files.max_extracted_chars allows {max_chars}.")
            pages.append(text)
    except InvalidRequestError:
        raise
    except Exception as exc:  # pypdf raises many types on malformed input, none of them ours
        log.info("%s could not be read as a PDF: %r", filename, exc)
        raise _invalid(f"{filename} could not be read as a PDF: the file is damaged or not "
                       "a PDF.") from None
    text = "\n\n".join(p for p in pages if p)
    if not text.strip():
        raise _invalid(f"{filename} has no extractable text (a scanned PDF?); text in images "
                       "is not recognised (no OCR): upload a PDF with a text layer.")
    return text


def _opens_without_password(reader: PdfReader) -> bool:
    """PDFs with only an owner password open in any viewer; so they do here."""
    try:
        return reader.decrypt("") != PasswordType.NOT_DECRYPTED
    except DependencyError:  # AES needs the `cryptography` package, which is not required
        return False


def _storable(text: str) -> str:
    """Text a database can hold: no NUL, no lone surrogates (from broken font maps)."""
    return text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
