"""The Files API on the real model through the official openai SDK: a text file and a PDF
uploaded with `client.files.create`, then chats whose `file` parts (the third seed's content
parts) carry the answer, and whose prompt grows by the file's text."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from seekserve.files.service import frame
from tests.e2e.conftest import Server
from tests.files.pdfs import make_pdf

pytestmark = pytest.mark.model

MODEL = "deepseek-v4-pro"
MAAS_MODEL = "MaaS_Deepseek_V4_pro_20260424"
# Thinking mode is on by default for this model; these chats are about the file's text.
NO_THINKING: dict[str, Any] = {"thinking": {"type": "disabled"}}
NOTES = ("Project Heron, meeting notes.\n"
         "Attendees: Ana, Bo and Chen.\n"
         "The secret code word for the launch is PELICAN.\n"
         "Next meeting: Thursday.\n")
PDF_LINES = [["Warehouse inventory report"],
             ["Page two.", "The vault number is 7319.", "Keep this number private."]]
PDF_TEXT = "Warehouse inventory report\n\nPage two.\nThe vault number is 7319.\nKeep this number " \
           "private."


def vocab_tokens(text: str) -> int:
    """Tokens of `text` alone, by the served model's own tokenizer."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from seekserve.engines.default_model import DEFAULT_MODEL
    from seekserve.settings import default_data_dir

    path = Path(default_data_dir()) / "models" / DEFAULT_MODEL.filename
    vocab = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    return len(vocab.tokenize(text.encode(), add_bos=False, special=False))


def ask(client: openai.OpenAI, model: str, *parts: dict[str, Any]) -> tuple[str, int]:
    """One greedy, short answer to a user turn of `parts`: its text and its prompt tokens."""
    message: Any = {"role": "user", "content": list(parts)}
    resp = client.chat.completions.create(model=model, messages=[message], temperature=0,
                                          max_tokens=24, extra_body=NO_THINKING)
    assert resp.usage is not None
    return resp.choices[0].message.content or "", resp.usage.prompt_tokens


def text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def file_part(file_id: str) -> dict[str, Any]:
    return {"type": "file", "file": {"file_id": file_id}}


@pytest.fixture
def uploads(client: openai.OpenAI) -> Iterator[dict[str, Any]]:
    """notes.txt and report.pdf uploaded through the SDK, deleted after the test (the session
    server keeps its store in the shared data dir)."""
    notes = client.files.create(file=("notes.txt", NOTES.encode()), purpose="user_data")
    report = client.files.create(file=("report.pdf", make_pdf(PDF_LINES)),
                                 purpose="user_data")
    try:
        yield {"notes": notes, "report": report}
    finally:
        for f in (notes, report):
            deleted = client.files.delete(f.id)
            assert (deleted.id, deleted.deleted) == (f.id, True)


def test_uploaded_files_are_listed_and_read_back(client: openai.OpenAI,
                                                 uploads: dict[str, Any]) -> None:
    notes, report = uploads["notes"], uploads["report"]
    assert notes.id.startswith("file-")
    assert (notes.object, notes.filename, notes.purpose, notes.status) == (
        "file", "notes.txt", "user_data", "processed")
    assert notes.bytes == len(NOTES.encode())
    assert report.bytes == len(make_pdf(PDF_LINES))
    listed = {f.id: f for f in client.files.list(purpose="user_data")}
    assert listed[notes.id] == notes and listed[report.id] == report
    assert client.files.retrieve(report.id) == report
    assert client.files.content(notes.id).content == NOTES.encode()
    assert client.files.content(report.id).content == make_pdf(PDF_LINES)


def test_a_text_file_answers_a_chat(client: openai.OpenAI, uploads: dict[str, Any]) -> None:
    question = "What is the secret code word in the notes? Reply with the code word only."
    notes = uploads["notes"]
    answer, with_file = ask(client, MODEL, file_part(notes.id), text_part(question))
    assert "PELICAN" in answer.upper()

    # The file stands in the prompt exactly as its framed text would.
    inline = frame("notes.txt", NOTES) + "\n\n"
    assert ask(client, MODEL, text_part(inline), text_part(question))[1] == with_file
    # ...and adds about its own size in tokens to the prompt.
    _, without = ask(client, MODEL, text_part(question))
    assert abs((with_file - without) - vocab_tokens(inline)) <= 3
    assert with_file - without > len(NOTES) // 6


def test_a_pdf_answers_a_chat_on_the_maas_route(server: Server,
                                                uploads: dict[str, Any]) -> None:
    """The third seed's route and model id, where `file` content parts come from."""
    maas = openai.OpenAI(base_url=f"{server.base_url}/v1/ai/maas-deepseek",
                         api_key=server.api_key, max_retries=0, timeout=120)
    question = "What is the vault number in the report? Reply with the number only."
    report = uploads["report"]
    answer, with_file = ask(maas, MAAS_MODEL, text_part("Here is a report."),
                            file_part(report.id), text_part(question))
    assert "7319" in answer
    _, without = ask(maas, MAAS_MODEL, text_part("Here is a report."), text_part(question))
    framed = "\n\n" + frame("report.pdf", PDF_TEXT) + "\n\n"
    assert abs((with_file - without) - vocab_tokens(framed)) <= 3


def test_an_unknown_file_is_a_400_in_chat_and_a_404_by_id(client: openai.OpenAI) -> None:
    """(Another key's file answers the same: tests/files covers that on both stores.)"""
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, MODEL, text_part("Read it."), file_part("file-000000000000000000000000"))
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["code"] == "file_not_found"
    assert error["param"] == "messages[0].content[1].file.file_id"
    assert error["message"].startswith("No such file")
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve("file-000000000000000000000000")
