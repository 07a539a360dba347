"""The emulator's route table: every endpoint, its name, and the function that answers it.

    POST /api/v3/wavespeed-ai/image-background-remover   submit            (route "submit")
    GET  /api/v3/predictions/{id}/result, /{id}           result            ("result")
    POST /api/v3/predictions                              prediction list   ("list")
    POST /api/v3/media/uploads                            upload ticket     ("upload")
    PUT  /upload/{token}                                  presigned upload  ("upload_put")
    POST /api/v3/media/upload/binary                      multipart upload  ("upload_binary")
    GET  /media/{token}/{filename}                        uploaded file     ("media")
    GET  /outputs/{id}.png                                task output       ("download")
    GET  /api/v3/balance                                  balance           ("balance")
    GET  /_emulator/stats, POST /_emulator/reset,
    POST /_emulator/end-delays                            control           ("control")

Every ``/api/v3`` call needs ``Authorization: Bearer <key>``; the presigned PUT and the file
downloads do not (like a storage bucket and a CDN). Open to the network (``allow_remote``),
every route needs the key: the control routes and unknown paths as a bearer key, the file
routes as a URL signed with it (the URLs the service hands out are). The key is checked
before a body is read, and no body (chunked too) is held beyond the upload size limit.
"""

from __future__ import annotations

import re
from email.message import Message
from email.parser import HeaderParser
from email.policy import HTTP
from urllib.parse import unquote

from bgremove.emulator.http import Exchange, Route, RouteTable
from bgremove.emulator.options import MODEL_ID
from bgremove.emulator.service import ApiError
from bgremove.emulator.store import Task

SUBMIT_PATH = f"/api/v3/{MODEL_ID}"


def submit(ex: Exchange, params: dict[str, str], body: bytes) -> None:
    request = ex.json_body(body)
    task = ex.service.submit(request, ex.public_base(), ex.headers.get("Host"))
    sync = bool(request.get("enable_sync_mode"))
    in_time = ex.service.wait_sync(task) if sync else True
    # The task exists: a fault now loses the answer (async: at once; sync: at its end).
    if ex.inject(after=True, lost=True):
        return
    if not in_time:
        _sync_timed_out(ex, task)
        return
    # Async: the task as created, as the service answers at once. Never how far its thread
    # got by now: under load a fast task could answer "completed", skipping every result read.
    ex.ok(task.prediction() if sync else task.submitted)


def _sync_timed_out(ex: Exchange, task: Task) -> None:
    data = task.prediction()
    timeout = ex.service.options.sync_timeout
    waited = "" if timeout is None else f" after {timeout:g} seconds"
    message = (f"Sync mode timed out{waited}; the task is still "
               f"running: query {data['urls']['get']}")
    style = ex.service.options.sync_timeout_style
    if style in ("gateway", "drop"):
        ex.service.stats.add("answers_lost")
    if style == "504":
        ex.error(504, f"Gateway Timeout: {message}", data=data)
    elif style == "processing":
        data.update(status="processing", code=5004, error=message)
        ex.ok(data)
    elif style == "gateway":  # a proxy's own page: no envelope, no id
        ex.send(504, b"<html><body><h1>504 Gateway Time-out</h1></body></html>", "text/html")
    else:
        ex.drop()


def result(ex: Exchange, params: dict[str, str], body: bytes) -> None:
    ex.ok(ex.service.result(params["id"]))


def prediction_list(ex: Exchange, params: dict[str, str], body: bytes) -> None:
    if not ex.service.options.list_route:
        not_found(ex, params, body)
        return
    ex.ok(ex.service.list_page(ex.json_body(body)))


def upload_ticket(ex: Exchange, params: dict[str, str], body: bytes) -> None:
    ex.ok(ex.service.ticket(ex.json_body(body), ex.public_base()))


def upload_put(ex: Exchange, params: dict[str, str], body: bytes) -> None:
    etag = ex.service.put(params["token"], ex.headers.get("Content-Type"), body, began=ex.began)
    ex.send(200, b"", "application/octet-stream", {"ETag": f'"{etag}"'})


def upload_binary(ex: Exchange, params: dict[str, str], body: bytes) -> None:
    content_type = ex.headers.get("Content-Type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise ApiError(400, "Invalid request: send multipart/form-data with a 'file' field")
    part = _multipart_file(content_type, body)
    if part is None:
        raise ApiError(400, "Invalid parameters: the form has no 'file' field")
    filename, part_type, data = part
    ex.ok(ex.service.upload(filename, part_type, data, ex.public_base(), received=len(body),
                            began=ex.began))


def media(ex: Exchange, params: dict[str, str], body: bytes) -> None:
    found = ex.service.store.file(params["token"])
    if found is None:
        ex.send(404, b"not found", "text/plain")
        return
    ex.download(found.data, found.content_type)


def download(ex: Exchange, params: dict[str, str], body: bytes) -> None:
    png = ex.service.store.output(params["id"])
    if png is None:
        ex.send(404, b"not found", "text/plain")
        return
    ex.download(png, "image/png")


def balance(ex: Exchange, params: dict[str, str], body: bytes) -> None:
    ex.ok(ex.service.balance())


def stats(ex: Exchange, params: dict[str, str], body: bytes) -> None:
    ex.json(200, ex.service.snapshot())


def reset(ex: Exchange, params: dict[str, str], body: bytes) -> None:
    ex.service.reset_stats()
    ex.json(200, {"reset": True})


def end_delays(ex: Exchange, params: dict[str, str], body: bytes) -> None:
    ex.service.end_delays()
    ex.json(200, {"ended": True})


def not_found(ex: Exchange, params: dict[str, str], body: bytes) -> None:
    if ex.path.startswith("/api/v3/"):
        raise ApiError(404, f"Not found: {ex.command} {ex.path.split('?')[0]}")
    ex.send(404, b"not found", "text/plain")


def _multipart_file(content_type: str, body: bytes) -> tuple[str, str, bytes] | None:
    """(filename, content type, bytes) of the form field ``file``, or None.

    Split by hand: the email package's MIME parser is not byte-exact for binary parts.
    """
    header = Message()
    header["Content-Type"] = content_type
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        return None
    for section in (b"\r\n" + body).split(b"\r\n--" + boundary.encode("latin-1"))[1:]:
        if section.startswith(b"--"):
            break
        head, sep, data = section.partition(b"\r\n\r\n")
        if not sep:
            continue
        part = HeaderParser(policy=HTTP).parsestr(head.decode("utf-8", "replace").lstrip())
        if part.get_param("name", header="content-disposition") != "file":
            continue
        filename = part.get_filename() or "upload"
        return unquote(filename).replace("/", "_"), part.get_content_type(), data
    return None


ROUTES = RouteTable((
    Route("submit", ("POST",), re.escape(SUBMIT_PATH), submit),
    Route("result", ("GET",), r"/api/v3/predictions/(?P<id>[^/]+)(?:/result)?", result),
    Route("list", ("POST",), r"/api/v3/predictions", prediction_list),
    Route("upload", ("POST",), r"/api/v3/media/uploads", upload_ticket),
    Route("upload_binary", ("POST",), r"/api/v3/media/upload/binary", upload_binary),
    Route("upload_put", ("PUT",), r"/upload/(?P<token>[^/]+)", upload_put, "file"),
    Route("media", ("GET", "HEAD"), r"/media/(?P<token>[^/]+)/.*", media, "file"),
    Route("download", ("GET", "HEAD"), r"/outputs/(?P<id>[^/]*)\.png", download, "file"),
    Route("balance", ("GET",), r"/api/v3/balance", balance),
    Route("control", ("GET",), r"/_emulator/stats", stats, "control"),
    Route("control", ("POST",), r"/_emulator/reset", reset, "control"),
    Route("control", ("POST",), r"/_emulator/end-delays", end_delays, "control"),
), fallback=Route("unknown", (), "", not_found, "control"))
