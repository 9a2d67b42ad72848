"""HTTP routes of the Files API (`/v1/files`), in OpenAI's shapes, scoped to the caller's key."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message

from seekserve.api.deps import services_of
from seekserve.api.openapi import ERROR_RESPONSES
from seekserve.files.kinds import SUPPORTED
from seekserve.files.service import MAX_LIST_LIMIT, PURPOSES, file_too_large
from seekserve.protocol.errors import InvalidRequestError
from seekserve.protocol.openai_chat import ErrorBody

# Room for the multipart framing and the `purpose` field around the file itself: a body over
# max_upload_bytes plus this is refused before (or while) it is read.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


class FileObject(BaseModel):
    id: str = Field(description="The file id (`file-...`), used as `file_id` in chats.")
    object: Literal["file"] = Field("file", description="Always `file`.")
    bytes: int = Field(description="Size of the file in bytes.")
    created_at: int = Field(description="Unix time (seconds) of the upload.")
    filename: str = Field(description="The file's name, without any directory part.")
    purpose: str = Field(description="The purpose given at upload.")
    status: Literal["processed"] = Field(
        "processed", description="Always `processed`: text is extracted during the upload.")


class FileList(BaseModel):
    object: Literal["list"] = Field("list", description="Always `list`.")
    data: list[FileObject] = Field(description="One page of the caller's files.")
    first_id: str | None = Field(description="Id of the first file of the page.")
    last_id: str | None = Field(description="Id of the last file; pass it as `after`.")
    has_more: bool = Field(description="Whether more files follow this page.")


class FileDeleted(BaseModel):
    id: str = Field(description="The deleted file's id.")
    object: Literal["file"] = Field("file", description="Always `file`.")
    deleted: bool = Field(description="Always true.")


FILE_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    404: {"model": ErrorBody, "description": "No such file for this API key "
          "(`file_not_found`); another key's file is answered the same way."},
}
UPLOAD_ERRORS: dict[int | str, dict[str, Any]] = {
    **FILE_ERRORS,
    400: {"model": ErrorBody, "description": "Missing or bad `file` or `purpose`, an "
          f"unsupported type (`unsupported_file_type`; supported: {SUPPORTED}), or content "
          "that does not match its type (`invalid_file`: not UTF-8, bad JSON, an encrypted "
          "PDF, a PDF without a text layer)."},
    413: {"model": ErrorBody, "description": "The file is over `files.max_upload_bytes` "
          "(`file_too_large`)."},
}
UPLOAD_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {
        "type": "object",
        "required": ["file", "purpose"],
        "properties": {
            "file": {"type": "string", "format": "binary",
                     "description": f"The file: {SUPPORTED}."},
            "purpose": {"type": "string", "enum": list(PURPOSES),
                        "description": "What the file is for; any purpose may be used in "
                        "chats."},
        },
    }},
}}}


def build_files_router() -> APIRouter:
    router = APIRouter(tags=["files"])

    @router.post("/v1/files", summary="Upload a file", response_model=FileObject,
                 responses=UPLOAD_ERRORS, openapi_extra=UPLOAD_BODY)
    async def create_file(request: Request) -> dict[str, Any]:
        services = services_of(request)
        caller = await services.auth.authenticate(request)
        limit = services.files.settings.max_upload_bytes
        file, purpose = await _read_upload(request, limit)
        try:
            data = await file.read()
        finally:
            await file.close()
        stored = await services.files.create(
            caller, filename=file.filename or "", content_type=file.content_type, data=data,
            purpose=purpose)
        return stored.wire()

    @router.get("/v1/files", summary="List the caller's files", response_model=FileList,
                responses=ERROR_RESPONSES)
    async def list_files(
        request: Request,
        purpose: Annotated[str | None, Query(description="Only files of this purpose.")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT,
                                    description="Most files in the page.")] = MAX_LIST_LIMIT,
        order: Annotated[Literal["asc", "desc"], Query(
            description="By upload time: `desc` (newest first) or `asc`.")] = "desc",
        after: Annotated[str | None, Query(
            description="A file id: the page starts after it (the previous page's "
            "`last_id`).")] = None,
    ) -> dict[str, Any]:
        services = services_of(request)
        caller = await services.auth.authenticate(request)
        return await services.files.page(caller, purpose=purpose, limit=limit, order=order,
                                         after=after)

    @router.get("/v1/files/{file_id}", summary="Describe one file", response_model=FileObject,
                responses=FILE_ERRORS)
    async def get_file(request: Request, file_id: str) -> dict[str, Any]:
        services = services_of(request)
        caller = await services.auth.authenticate(request)
        return (await services.files.get(caller, file_id)).wire()

    @router.get("/v1/files/{file_id}/content", summary="Download a file's bytes",
                response_class=Response, responses={
                    200: {"description": "The bytes as uploaded.",
                          "content": {"application/octet-stream": {
                              "schema": {"type": "string", "format": "binary"}}}},
                    **FILE_ERRORS})
    async def file_content(request: Request, file_id: str) -> Response:
        services = services_of(request)
        caller = await services.auth.authenticate(request)
        stored, data = await services.files.content(caller, file_id)
        # The type is the one set for the file's kind, never the client's (no text/html);
        # as an attachment, a browser saves it instead of rendering it.
        return Response(data, media_type=stored.content_type, headers={
            "Content-Disposition": _attachment(stored.filename),
            "X-Content-Type-Options": "nosniff",
        })

    @router.delete("/v1/files/{file_id}", summary="Delete a file", response_model=FileDeleted,
                   responses=FILE_ERRORS)
    async def delete_file(request: Request, file_id: str) -> dict[str, Any]:
        services = services_of(request)
        caller = await services.auth.authenticate(request)
        return await services.files.delete(caller, file_id)

    return router


async def _read_upload(request: Request, limit: int) -> tuple[UploadFile, str | None]:
    """The multipart body's `file` and `purpose`, read within `limit` bytes of file (plus the
    multipart framing): refused from Content-Length when it is sent, else as it streams in."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "multipart/form-data":
        raise InvalidRequestError(
            "Upload a file as multipart/form-data with the fields `file` and `purpose`.",
            param="file", code="invalid_content_type")
    body_limit = limit + MULTIPART_OVERHEAD_BYTES
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > body_limit:
        raise file_too_large(limit)
    received = 0

    async def bounded_receive() -> Message:
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > body_limit:
                raise file_too_large(limit)
        return message

    try:
        form = await Request(request.scope, bounded_receive).form(
            max_files=1, max_fields=16, max_part_size=MULTIPART_OVERHEAD_BYTES)
    except StarletteHTTPException as exc:  # what Starlette makes of a malformed body
        raise InvalidRequestError(f"The multipart body could not be read: {exc.detail}",
                                  param="file", code="invalid_multipart") from None
    file, purpose = form.get("file"), form.get("purpose")
    if not isinstance(file, UploadFile):
        await form.close()
        message = ("file is required: a multipart part named `file` with a filename."
                   if file is None else "file must be a file part (with a filename), not text.")
        raise InvalidRequestError(message, param="file",
                                  code="missing_required_parameter" if file is None
                                  else "invalid_parameter")
    if isinstance(purpose, UploadFile):
        await form.close()
        raise InvalidRequestError("purpose must be a text field, not a file.", param="purpose")
    return file, purpose


def _attachment(filename: str) -> str:
    """A Content-Disposition any client can read: an ASCII name, and the UTF-8 one (RFC 6266)."""
    ascii_name = filename.encode("ascii", "replace").decode().replace('"', "'").replace("?", "_")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename)}"
