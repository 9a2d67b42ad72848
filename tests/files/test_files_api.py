"""The Files API over HTTP on the scripted engine: upload, list, get, content, delete, per-key
ownership, every refusal (400/404/413), PDF text extraction, and file parts in chats, on SQLite
and on PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import io
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic import command
from alembic.config import Config
from fastapi import FastAPI
from pypdf import PdfReader, PdfWriter
from sqlalchemy import Connection, inspect, select, text
from sqlalchemy.engine import URL

from seekserve.files.schema import files
from seekserve.tenancy.store import MIGRATIONS, Store
from tests.api.conftest import MAAS_MODEL, MODEL, asgi_client, sse_json
from tests.fakes import SPECIALS, FakeEngine
from tests.files.conftest import ADMIN, KEY_A, KEY_B, bearer, files_app
from tests.files.pdfs import encrypted_pdf, make_pdf, scanned_pdf

CHAT = "/v1/chat/completions"
MAAS_CHAT = "/v1/ai/maas-deepseek/chat/completions"
NOTES = "Meeting notes.\nThe code word is PELICAN-42.\nBring snacks.\n"
PDF_LINES = [["Quarterly report (draft)", "The vault number is 7319."], ["Page two: all good."]]
# Thinking mode is on by default for this model; these tests are about the prompt only.
NO_THINKING: dict[str, Any] = {"thinking": {"type": "disabled"}}
PDF_TEXT = "Quarterly report (draft)\nThe vault number is 7319.\n\nPage two: all good."


async def upload(client: httpx.AsyncClient, name: str, data: bytes | str, *,
                 purpose: str | None = "user_data", content_type: str | None = None,
                 key: str | None = None) -> httpx.Response:
    raw = data.encode() if isinstance(data, str) else data
    part = (name, raw, content_type) if content_type else (name, raw)
    form = {"purpose": purpose} if purpose is not None else {}
    headers = bearer(key) if key else None
    return await client.post("/v1/files", files={"file": part}, data=form, headers=headers)


async def uploaded(client: httpx.AsyncClient, name: str, data: bytes | str,
                   **kwargs: Any) -> dict[str, Any]:
    response = await upload(client, name, data, **kwargs)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def error_of(response: httpx.Response, status: int, code: str, param: str | None
             ) -> str:
    """The error's message, after checking its status, code and param."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (code, param), error
    assert error["type"] == "invalid_request_error"
    message: str = error["message"]
    return message


def prompt_text(engine: FakeEngine) -> str:
    """What the last request put in front of the model (the fake engine's tokens are bytes)."""
    tokens = engine.requests[-1].prompt
    return bytes(t - SPECIALS for t in tokens if t >= SPECIALS).decode()


def file_message(*parts: str | dict[str, Any]) -> list[dict[str, Any]]:
    """One user message of `text` parts (from strings) and `file` parts (from file objects)."""
    content = [{"type": "text", "text": p} if isinstance(p, str)
               else {"type": "file", "file": {"file_id": p["id"]}} for p in parts]
    return [{"role": "user", "content": content}]


# ----- the routes on both stores -------------------------------------------------------------


async def test_upload_list_get_content_delete(client: httpx.AsyncClient) -> None:
    before = int(time.time())
    notes = await uploaded(client, "notes.txt", NOTES)
    assert set(notes) == {"id", "object", "bytes", "created_at", "filename", "purpose",
                          "status"}
    assert notes["id"].startswith("file-") and len(notes["id"]) == 29
    assert notes["object"] == "file"
    assert notes["bytes"] == len(NOTES.encode())
    assert notes["filename"] == "notes.txt"
    assert notes["purpose"] == "user_data"
    assert notes["status"] == "processed"
    assert before <= notes["created_at"] <= int(time.time())
    pdf_bytes = make_pdf(PDF_LINES)
    report = await uploaded(client, "report.pdf", pdf_bytes, purpose="assistants")
    assert (report["bytes"], report["purpose"]) == (len(pdf_bytes), "assistants")

    listing = (await client.get("/v1/files")).json()
    assert listing == {"object": "list", "data": [report, notes], "first_id": report["id"],
                       "last_id": notes["id"], "has_more": False}
    ascending = (await client.get("/v1/files", params={"order": "asc"})).json()
    assert [f["id"] for f in ascending["data"]] == [notes["id"], report["id"]]
    only = (await client.get("/v1/files", params={"purpose": "assistants"})).json()
    assert only["data"] == [report]
    first = (await client.get("/v1/files", params={"limit": 1})).json()
    assert (first["data"], first["has_more"]) == ([report], True)
    rest = (await client.get("/v1/files", params={"limit": 1, "after": first["last_id"]})).json()
    assert (rest["data"], rest["has_more"]) == ([notes], False)

    assert (await client.get(f"/v1/files/{notes['id']}")).json() == notes
    content = await client.get(f"/v1/files/{notes['id']}/content")
    assert content.status_code == 200
    assert content.content == NOTES.encode()
    assert content.headers["content-type"] == "text/plain; charset=utf-8"
    assert content.headers["content-disposition"] == (
        "attachment; filename=\"notes.txt\"; filename*=UTF-8''notes.txt")
    assert content.headers["x-content-type-options"] == "nosniff"
    pdf_content = await client.get(f"/v1/files/{report['id']}/content")
    assert pdf_content.content == pdf_bytes
    assert pdf_content.headers["content-type"] == "application/pdf"

    deleted = await client.delete(f"/v1/files/{notes['id']}")
    assert deleted.status_code == 200
    assert deleted.json() == {"id": notes["id"], "object": "file", "deleted": True}
    for response in (await client.get(f"/v1/files/{notes['id']}"),
                     await client.get(f"/v1/files/{notes['id']}/content"),
                     await client.delete(f"/v1/files/{notes['id']}")):
        assert error_of(response, 404, "file_not_found", "file_id") == (
            f"No such file: {notes['id']!r}.")
    assert (await client.get("/v1/files")).json()["data"] == [report]


async def test_another_keys_file_looks_like_a_missing_one(client: httpx.AsyncClient) -> None:
    mine = await uploaded(client, "notes.txt", NOTES)
    missing = "file-000000000000000000000000"
    for path in ("/v1/files/{}", "/v1/files/{}/content"):
        theirs = await client.get(path.format(mine["id"]), headers=bearer(KEY_B))
        absent = await client.get(path.format(missing), headers=bearer(KEY_B))
        assert theirs.status_code == absent.status_code == 404
        assert theirs.json() == {"error": {**absent.json()["error"],
                                           "message": f"No such file: {mine['id']!r}."}}
    gone = await client.delete(f"/v1/files/{mine['id']}", headers=bearer(KEY_B))
    assert error_of(gone, 404, "file_not_found", "file_id")
    assert (await client.get("/v1/files", headers=bearer(KEY_B))).json()["data"] == []
    chat = await client.post(CHAT, headers=bearer(KEY_B), json={
        **NO_THINKING, "model": MODEL, "messages": file_message("Summarise:", mine)})
    message = error_of(chat, 400, "file_not_found", "messages[0].content[1].file.file_id")
    assert message.startswith(f"No such file: {mine['id']!r}")
    # Key A still has it, and can use it.
    assert (await client.get("/v1/files")).json()["data"] == [mine]
    ok = await client.post(CHAT, json={**NO_THINKING, "model": MODEL,
                                       "messages": file_message(mine)})
    assert ok.status_code == 200, ok.text


async def test_a_managed_key_owns_files_by_its_id(app: FastAPI,
                                                  client: httpx.AsyncClient) -> None:
    created = await client.post("/admin/keys", json={"name": "files"}, headers=bearer(ADMIN))
    assert created.status_code == 201, created.text
    managed = created.json()
    theirs = await uploaded(client, "notes.txt", NOTES, key=managed["key"])
    mine = await uploaded(client, "mine.txt", "mine")
    assert (await client.get("/v1/files", headers=bearer(managed["key"]))
            ).json()["data"] == [theirs]
    assert (await client.get("/v1/files")).json()["data"] == [mine]
    async with app.state.services.tenancy.store.read() as conn:
        owners = dict((await conn.execute(select(files.c.id, files.c.owner))).all())
    assert owners == {theirs["id"]: managed["id"],
                      mine["id"]: hashlib.sha256(KEY_A.encode()).hexdigest()}


async def test_file_parts_become_text_in_the_prompt(client: httpx.AsyncClient,
                                                    engine: FakeEngine) -> None:
    """On the third seed's route and model: `[text, file, file, text]` is the text with both
    files framed between marker lines, and costs exactly as many prompt tokens as that text."""
    notes = await uploaded(client, "notes.txt", NOTES)
    report = await uploaded(client, "report.pdf", make_pdf(PDF_LINES))
    expected = ("Read these.\n\n"
                f"[file: notes.txt]\n{NOTES}\n[end of file: notes.txt]\n\n"
                f"[file: report.pdf]\n{PDF_TEXT}\n[end of file: report.pdf]\n\n"
                "What is the code word?")
    response = await client.post(MAAS_CHAT, json={
        **NO_THINKING, "model": MAAS_MODEL,
        "messages": file_message("Read these.", notes, report, "What is the code word?")})
    assert response.status_code == 200, response.text
    assert expected in prompt_text(engine)
    with_files = response.json()["usage"]["prompt_tokens"]

    as_text = await client.post(MAAS_CHAT, json={
        **NO_THINKING, "model": MAAS_MODEL, "messages": [{"role": "user", "content": expected}]})
    assert as_text.json()["usage"]["prompt_tokens"] == with_files
    bare = await client.post(MAAS_CHAT, json={
        **NO_THINKING, "model": MAAS_MODEL,
        "messages": file_message("Read these.", "What is the code word?")})
    # One token per byte here: the files add exactly their framed text.
    added = len(expected.encode()) - len(b"Read these.What is the code word?")
    assert with_files - bare.json()["usage"]["prompt_tokens"] == added

    streamed = await client.post(CHAT, json={
        **NO_THINKING, "model": MODEL, "stream": True, "messages": file_message(report)})
    assert streamed.status_code == 200
    assert "".join(e["choices"][0]["delta"].get("content") or ""
                   for e in sse_json(streamed.text) if e.get("choices")) == engine.reply
    assert f"[file: report.pdf]\n{PDF_TEXT}\n[end of file: report.pdf]" in prompt_text(engine)


async def test_upload_limit_on_file_count_holds_under_concurrency(
        engine: FakeEngine, tmp_path: Path, store_url: URL) -> None:
    app = files_app(engine, tmp_path, store_url, files={"max_files_per_owner": 3})
    async with asgi_client(app, headers=bearer(KEY_A)) as client:
        results = await asyncio.gather(*(upload(client, f"n{i}.txt", f"note {i}")
                                         for i in range(6)))
        assert sorted(r.status_code for r in results) == [200] * 3 + [400] * 3
        refused = next(r for r in results if r.status_code == 400)
        assert error_of(refused, 400, "too_many_files", "file") == (
            "This API key already keeps 3 files; files.max_files_per_owner allows 3. "
            "Delete some first.")
        assert (await upload(client, "b.txt", "other key", key=KEY_B)).status_code == 200
        first = (await client.get("/v1/files")).json()["data"][0]
        await client.delete(f"/v1/files/{first['id']}")
        assert (await upload(client, "again.txt", "room again")).status_code == 200


async def test_migration_adds_files_to_a_0001_store(store_url: URL) -> None:
    store = Store(store_url)
    try:
        if store.is_sqlite:
            Path(store_url.database or "").parent.mkdir(parents=True, exist_ok=True)
        async with store.write() as conn:
            await conn.run_sync(_upgrade_to, "0001_tenancy")
        await store.migrate()
        async with store.read() as conn:
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))
                       ).scalar_one()
            indexes = await conn.run_sync(
                lambda c: {i["name"] for i in inspect(c).get_indexes("files")})
        assert "files" in tables and version == "0002_files"
        assert indexes == {"ix_files_owner_created"}
    finally:
        await store.aclose()


def _upgrade_to(connection: Connection, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", MIGRATIONS)
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


# ----- refusals (SQLite only: they are decided before the store is written) ------------------

BAD_UPLOADS = {
    "unsupported type": ("photo.png", b"\x89PNG\r\n\x1a\n....", "image/png",
                         "unsupported_file_type", "photo.png (image/png) is not a supported "
                         "file type; supported: UTF-8 text (.txt, or any text/* content type), "
                         "Markdown (.md, .markdown), JSON (.json), JSON Lines (.jsonl), CSV "
                         "(.csv), TSV (.tsv) and PDF (.pdf)."),
    "no extension, binary type": ("blob", b"\x00\x01", "application/octet-stream",
                                  "unsupported_file_type", "blob (application/octet-stream) is "
                                  "not a supported file type"),
    "binary text": ("notes.txt", b"ok\xff\xfe\x00", None, "invalid_file",
                    "notes.txt is not UTF-8 text (byte 0xff at offset 2 is invalid): binary "
                    "files are not supported; save text as UTF-8."),
    "NUL in text": ("nul.txt", b"a\x00b", None, "invalid_file",
                    "nul.txt contains NUL bytes: binary files are not supported."),
    "bad JSON": ("data.json", b'{"a": tru}', None, "invalid_file",
                 "data.json is not valid JSON at line 1 column 7: Expecting value."),
    "bad JSON Lines": ("rows.jsonl", b'{"a": 1}\n{oops}\n', None, "invalid_file",
                       "rows.jsonl is not valid JSON at line 2: Expecting property name "
                       "enclosed in double quotes."),
    "a .pdf that is not one": ("fake.pdf", b"just text", None, "invalid_file",
                               "fake.pdf is not a PDF: it has no %PDF- header."),
    "damaged PDF": ("broken.pdf", b"%PDF-1.4\nnothing else", None, "invalid_file",
                    "broken.pdf could not be read as a PDF: the file is damaged or not a PDF."),
    "scanned PDF": ("scan.pdf", scanned_pdf(), None, "invalid_file",
                    "scan.pdf has no extractable text (a scanned PDF?); text in images is not "
                    "recognised (no OCR): upload a PDF with a text layer."),
    "encrypted PDF": ("locked.pdf", encrypted_pdf(PDF_LINES), None, "invalid_file",
                      "locked.pdf is an encrypted PDF; upload it without a password."),
    "empty file": ("empty.txt", b"", None, "invalid_file", "empty.txt is empty."),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
async def test_a_bad_file_is_refused_with_the_reason(sqlite_client: httpx.AsyncClient,
                                                     case: str) -> None:
    name, data, content_type, code, message = BAD_UPLOADS[case]
    response = await upload(sqlite_client, name, data, content_type=content_type)
    assert error_of(response, 400, code, "file").startswith(message)
    assert (await sqlite_client.get("/v1/files")).json()["data"] == []


async def test_purpose_is_required_and_checked(sqlite_client: httpx.AsyncClient) -> None:
    missing = await upload(sqlite_client, "notes.txt", NOTES, purpose=None)
    assert error_of(missing, 400, "missing_required_parameter", "purpose") == (
        "purpose is required: one of assistants, batch, fine-tune, vision, user_data, evals.")
    wrong = await upload(sqlite_client, "notes.txt", NOTES, purpose="chat")
    assert error_of(wrong, 400, "invalid_parameter", "purpose") == (
        "Invalid value for purpose: 'chat'; expected one of assistants, batch, fine-tune, "
        "vision, user_data, evals.")
    for purpose in ("assistants", "batch", "fine-tune", "vision", "user_data", "evals"):
        assert (await upload(sqlite_client, "n.txt", "x", purpose=purpose)).status_code == 200


async def test_the_body_must_be_multipart_with_a_file(sqlite_client: httpx.AsyncClient) -> None:
    as_json = await sqlite_client.post("/v1/files", json={"file": "x", "purpose": "user_data"})
    assert error_of(as_json, 400, "invalid_content_type", "file") == (
        "Upload a file as multipart/form-data with the fields `file` and `purpose`.")
    no_file = await sqlite_client.post("/v1/files", files={"other": ("a.txt", b"x")},
                                       data={"purpose": "user_data"})
    assert error_of(no_file, 400, "missing_required_parameter", "file") == (
        "file is required: a multipart part named `file` with a filename.")
    as_field = await sqlite_client.post("/v1/files", data={"file": "text",
                                                           "purpose": "user_data"},
                                        files={"x": ("x.txt", b"x")})
    assert error_of(as_field, 400, "invalid_parameter", "file") == (
        "file must be a file part (with a filename), not text.")
    two = await sqlite_client.post("/v1/files", data={"purpose": "user_data"},
                                   files=[("file", ("a.txt", b"a")), ("file", ("b.txt", b"b"))])
    assert error_of(two, 400, "invalid_multipart", "file") == (
        "The multipart body could not be read: Too many files. Maximum number of files is 1.")
    long_name = await upload(sqlite_client, "n" * 252 + ".txt", "x")
    assert error_of(long_name, 400, "invalid_parameter", "file") == (
        "The filename has 256 characters; at most 255 are allowed.")


async def test_files_routes_need_a_key(engine: FakeEngine, tmp_path: Path) -> None:
    async with asgi_client(files_app(engine, tmp_path)) as client:
        for response in (await upload(client, "n.txt", "x"), await client.get("/v1/files"),
                         await client.get("/v1/files/file-x"),
                         await client.get("/v1/files/file-x/content"),
                         await client.delete("/v1/files/file-x")):
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "missing_api_key"


async def test_an_open_server_keeps_anonymous_files_under_one_owner(
        engine: FakeEngine, tmp_path: Path) -> None:
    app = files_app(engine, tmp_path, api_keys=[], admin_key=None)
    async with asgi_client(app) as client:
        stored = await uploaded(client, "notes.txt", NOTES)
        assert (await client.get("/v1/files")).json()["data"] == [stored]
        async with app.state.services.tenancy.store.read() as conn:
            owner = (await conn.execute(select(files.c.owner))).scalar_one()
        assert owner == ""


async def test_list_parameters_are_checked(sqlite_client: httpx.AsyncClient) -> None:
    for params, param in (({"limit": 0}, "limit"), ({"limit": 10_001}, "limit"),
                          ({"order": "sideways"}, "order")):
        response = await sqlite_client.get("/v1/files", params=params)
        assert error_of(response, 400, "invalid_parameter", param)
    unknown = await sqlite_client.get("/v1/files", params={"after": "file-nope"})
    assert error_of(unknown, 400, "file_not_found", "after") == "No such file: 'file-nope'."


ACCEPTED = {
    # name, content type sent, bytes -> content type served, text extracted
    "markdown": ("doc.md", None, b"# Title\n\nBody.", "text/markdown; charset=utf-8",
                 "# Title\n\nBody."),
    "markdown long suffix": ("doc.markdown", None, b"*hi*", "text/markdown; charset=utf-8",
                             "*hi*"),
    "csv": ("t.csv", None, b"a,b\n1,2\n", "text/csv; charset=utf-8", "a,b\n1,2\n"),
    "tsv": ("t.tsv", None, b"a\tb\n", "text/tab-separated-values; charset=utf-8", "a\tb\n"),
    "json": ("d.json", None, '{"ключ": [1, 2]}'.encode(), "application/json",
             '{"ключ": [1, 2]}'),
    "json lines": ("d.jsonl", None, b'{"a": 1}\n\n{"b": 2}\n', "application/jsonl",
                   '{"a": 1}\n\n{"b": 2}\n'),
    "BOM dropped": ("bom.txt", None, b"\xef\xbb\xbfhello", "text/plain; charset=utf-8",
                    "hello"),
    "any text/* type": ("script.py", "text/x-python", b"print(1)\n",
                        "text/plain; charset=utf-8", "print(1)\n"),
    "HTML served as plain text": ("page.html", "text/html", b"<script>x()</script>",
                                  "text/plain; charset=utf-8", "<script>x()</script>"),
    "PDF bytes under another name": ("scan.bin", "application/octet-stream",
                                     make_pdf([["Hidden PDF."]]), "application/pdf",
                                     "Hidden PDF."),
}


@pytest.mark.parametrize("case", list(ACCEPTED))
async def test_supported_kinds_are_stored_with_their_text(
        sqlite_app: FastAPI, sqlite_client: httpx.AsyncClient, case: str) -> None:
    name, sent_type, data, served_type, extracted = ACCEPTED[case]
    stored = await uploaded(sqlite_client, name, data, content_type=sent_type)
    content = await sqlite_client.get(f"/v1/files/{stored['id']}/content")
    assert content.content == data
    assert content.headers["content-type"] == served_type
    owner = hashlib.sha256(KEY_A.encode()).hexdigest()
    texts = await sqlite_app.state.services.files.store.texts(owner, [stored["id"]])
    assert texts[stored["id"]][1] == extracted


async def test_a_pdf_with_only_an_owner_password_is_read(sqlite_client: httpx.AsyncClient,
                                                         engine: FakeEngine) -> None:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(make_pdf(PDF_LINES))))
    writer.encrypt("", owner_password="owner", algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    stored = await uploaded(sqlite_client, "owner-only.pdf", out.getvalue())
    response = await sqlite_client.post(CHAT, json={**NO_THINKING, "model": MODEL,
                                                    "messages": file_message(stored)})
    assert response.status_code == 200, response.text
    assert PDF_TEXT in prompt_text(engine)


async def test_filename_keeps_only_its_last_segment(sqlite_client: httpx.AsyncClient) -> None:
    stored = await uploaded(sqlite_client, "reports/2026/q1 résumé.txt", "x")
    assert stored["filename"] == "q1 résumé.txt"
    content = await sqlite_client.get(f"/v1/files/{stored['id']}/content")
    assert content.headers["content-disposition"] == (
        "attachment; filename=\"q1 r_sum_.txt\"; filename*=UTF-8''q1%20r%C3%A9sum%C3%A9.txt")


async def test_text_over_the_extracted_limit_is_refused(engine: FakeEngine,
                                                        tmp_path: Path) -> None:
    app = files_app(engine, tmp_path, files={"max_extracted_chars": 50})
    async with asgi_client(app, headers=bearer(KEY_A)) as client:
        assert (await upload(client, "ok.txt", "x" * 50)).status_code == 200
        text_file = await upload(client, "big.txt", "x" * 51)
        assert error_of(text_file, 400, "invalid_file", "file") == (
            "big.txt has 51 characters of text; files.max_extracted_chars allows 50.")
        pdf = await upload(client, "big.pdf", make_pdf([["a" * 30], ["b" * 30], ["c" * 30]]))
        assert error_of(pdf, 400, "invalid_file", "file") == (
            "big.pdf has more than 50 characters of text; files.max_extracted_chars allows 50.")


# ----- 413 ------------------------------------------------------------------------------------

LIMIT = 1000
TOO_LARGE = "The file is larger than files.max_upload_bytes (1000 bytes)."


def multipart_body(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = "seekserve-test-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n"
            f"user_data\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"{name}\"\r\nContent-Type: text/plain\r\n\r\n").encode()
    body += data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


async def test_an_upload_over_the_size_limit_is_413(engine: FakeEngine, tmp_path: Path) -> None:
    app = files_app(engine, tmp_path, files={"max_upload_bytes": LIMIT})
    async with asgi_client(app, headers=bearer(KEY_A)) as client:
        assert (await upload(client, "fits.txt", "x" * LIMIT)).status_code == 200
        # Within the room left for multipart framing: caught on the file's own size.
        over = await upload(client, "over.txt", "x" * (LIMIT + 1))
        assert error_of(over, 413, "file_too_large", "file") == TOO_LARGE

        # A declared Content-Length over the limit is refused before the body is read.
        body, content_type = multipart_body("huge.txt", b"x" * 200_000)
        pulled = 0

        async def chunks() -> AsyncIterator[bytes]:
            nonlocal pulled
            for start in range(0, len(body), 10_000):
                pulled += 1
                yield body[start:start + 10_000]

        declared = await client.post("/v1/files", content=chunks(), headers={
            "content-type": content_type, "content-length": str(len(body))})
        assert error_of(declared, 413, "file_too_large", "file") == TOO_LARGE
        assert pulled <= 1

        # Without Content-Length (chunked), it is refused once the stream passes the limit.
        pulled = 0
        streamed = await client.post("/v1/files", content=chunks(),
                                     headers={"content-type": content_type})
        assert "content-length" not in streamed.request.headers
        assert error_of(streamed, 413, "file_too_large", "file") == TOO_LARGE
        assert pulled < len(body) // 10_000
        assert (await client.get("/v1/files")).json()["data"][0]["filename"] == "fits.txt"


# ----- chats with bad file parts ------------------------------------------------------------


async def test_chat_refuses_unknown_and_oversized_files(engine: FakeEngine,
                                                        tmp_path: Path) -> None:
    app = files_app(engine, tmp_path, limits={"max_message_chars": 3000},
                    files={"max_request_chars": 4000})
    async with asgi_client(app, headers=bearer(KEY_A)) as client:
        unknown = await client.post(CHAT, json={**NO_THINKING, "model": MODEL, "messages": [
            {"role": "user", "content": "hi"},
            {"role": "user", "content": [{"type": "text", "text": "see"},
                                         {"type": "file", "file": {"file_id": "file-nope"}}]}]})
        assert error_of(unknown, 400, "file_not_found",
                        "messages[1].content[1].file.file_id") == (
            "No such file: 'file-nope' (a file can be used only with the API key that "
            "uploaded it).")

        big = await uploaded(client, "big.txt", "y" * 3100)
        over_message = await client.post(CHAT, json={**NO_THINKING, "model": MODEL,
                                                      "messages": file_message("Read:", big)})
        assert error_of(over_message, 400, "message_too_long",
                        "messages[0].content[1].file.file_id").startswith(
            "messages[0] would have at least 3146 characters with the text of big.txt (3100 "
            "characters) put in; limits.max_message_chars allows 3000.")

        mid = await uploaded(client, "mid.txt", "z" * 2500)
        two = [*file_message(mid), *file_message(mid)]
        over_request = await client.post(CHAT, json={**NO_THINKING, "model": MODEL,
                                                      "messages": two})
        assert error_of(over_request, 400, "message_too_long",
                        "messages[1].content[0].file.file_id") == (
            "The files in this request hold more than 4000 characters of text "
            "(files.max_request_chars); messages[1].content[0] (mid.txt) goes over it.")
        assert len(engine.requests) == 0

        # Within every character limit, but longer than the engine's context (4096 tokens).
        context = await client.post(CHAT, json={**NO_THINKING, "model": MODEL, "messages": [
            *file_message(mid), {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "w" * 2000}]})
        assert context.status_code == 400
        assert context.json()["error"]["code"] == "context_length_exceeded"


async def test_openapi_documents_the_files_routes(sqlite_client: httpx.AsyncClient) -> None:
    spec = (await sqlite_client.get("/openapi.json")).json()
    paths = spec["paths"]
    assert set(paths["/v1/files"]) == {"get", "post"}
    assert set(paths["/v1/files/{file_id}"]) == {"get", "delete"}
    assert set(paths["/v1/files/{file_id}/content"]) == {"get"}
    upload_op = paths["/v1/files"]["post"]
    assert upload_op["tags"] == ["files"] and upload_op["summary"] == "Upload a file"
    form = upload_op["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["file", "purpose"]
    assert "user_data" in form["properties"]["purpose"]["enum"]
    assert {"400", "401", "404", "413"} <= set(upload_op["responses"])
    assert paths["/v1/files/{file_id}"]["delete"]["summary"] == "Delete a file"
