"""Hostile HTTP against a gateway process: slow heads and bodies (slowloris), oversized heads,
malformed framing and encodings, JSON nested past any parser's depth, and 2,000 concurrent
idle SSE connections (streams whose upstream sends nothing), while ordinary requests go on.

Held: every bad request gets a 4xx (or its connection is closed by the server), never a 5xx or
a hang; a slow client is cut off at its deadline; the server's log has no traceback; ordinary
requests are served as fast during the attack as before it; what an idle stream costs the
gateway in memory is measured.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.conftest import API_KEY, Server, stop_server
from tests.reliability.harness import (
    Row,
    Upstream,
    remote_engine,
    resources,
    start_in,
    start_paced_upstream,
    stop_process,
)

HEAD_TIMEOUT_S = 3.0
BODY_TIMEOUT_S = 3.0
LINGER_S = 2.0  # seekserve/http_protocol.py's _LINGER_S
IDLE_STREAMS = 2000
SLOW_CLIENTS = 90
LATENCY_SAMPLES = 40


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("hostile")
    upstreams: list[Upstream] = []
    server = None
    try:
        upstreams.append(start_paced_upstream(workdir, pieces=2, interval=0.0))
        upstreams.append(start_paced_upstream(workdir, hold=True))
        config = {
            "server": {"host": "127.0.0.1", "header_timeout_s": HEAD_TIMEOUT_S,
                       "body_timeout_s": BODY_TIMEOUT_S},
            "engines": {
                "fast": remote_engine([upstreams[0].url]),
                "idle": remote_engine([upstreams[1].url], max_in_flight=IDLE_STREAMS + 100)},
            "models": [{"id": "fast", "engine": "fast"}, {"id": "idle", "engine": "idle"}],
            "store": {"flush_interval_s": 0.2},
        }
        server = start_in(workdir, config)
        yield server
    finally:
        if server is not None:
            stop_server(server)
        for upstream in upstreams:
            stop_process(upstream.process)


def port_of(server: Server) -> int:
    return int(server.base_url.rsplit(":", 1)[1])


def chat_bytes(body: bytes, *headers: bytes, path: bytes = b"/v1/chat/completions",
               close: bool = True) -> bytes:
    """A chat request; with `close`, it asks the server to close the connection after it."""
    return (b"POST " + path + b" HTTP/1.1\r\nHost: hostile\r\n"
            b"Authorization: Bearer " + API_KEY.encode() + b"\r\n"
            b"Content-Type: application/json\r\n" + b"".join(headers)
            + (b"Connection: close\r\n" if close else b"")
            + b"Content-Length: %d\r\n\r\n" % len(body) + body)


FAST = json.dumps({"model": "fast", "messages": [{"role": "user", "content": "hi"}]}).encode()


async def raw_exchange(port: int, data: bytes) -> bytes:
    """Send `data`, read until the server closes (30 s at most): the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 30)
    except ConnectionError as exc:
        return f"<{type(exc).__name__}>".encode()
    finally:
        writer.close()


async def latencies(server: Server, n: int = LATENCY_SAMPLES) -> list[float]:
    """Seconds per ordinary request (a short non-streamed answer), one after another."""
    took = []
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30,
                                 headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        for _ in range(n):
            started = time.perf_counter()
            response = await http.post("/v1/chat/completions", content=FAST,
                                       headers={"Content-Type": "application/json"})
            took.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text
    return took


def no_tracebacks(server: Server) -> list[str]:
    return [line for line in server.log().splitlines()
            if "Traceback" in line or " ERROR " in line or "ERROR:" in line]


# ----- bad requests -----

NESTED = b"[" * 100_000 + b"]" * 100_000
CASES: list[tuple[str, bytes, tuple[int, ...]]] = [
    ("JSON nested 100,000 deep", chat_bytes(b'{"model":"fast","messages":' + NESTED + b"}"),
     (400,)),
    ("nested JSON in a string field parsed as JSON", chat_bytes(json.dumps({
        "model": "fast", "messages": [{"role": "user", "content": "x"}, {
            "role": "assistant", "content": None, "tool_calls": [{
                "id": "c", "type": "function", "function": {
                    "name": "f", "arguments": "[" * 50_000 + "]" * 50_000}}]},
            {"role": "tool", "tool_call_id": "c", "content": "y"}]}).encode()), (200,)),
    ("invalid UTF-8 in the body", chat_bytes(
        b'{"model":"fast","messages":[{"role":"user","content":"\xff\xfe\xc3"}]}'), (400,)),
    ("invalid UTF-8 in a header value", chat_bytes(FAST, b"X-Note: \xff\xfe\r\n"), (200,)),
    ("invalid UTF-8 in the API key", chat_bytes(FAST).replace(
        b"Bearer " + API_KEY.encode(), b"Bearer \xff\xfe\xfd"), (401,)),
    ("invalid UTF-8 in the path", chat_bytes(FAST, path=b"/v1/chat/%ff%fe"), (404,)),
    ("a body that is not JSON", chat_bytes(b"\x00\x01\x02 not json"), (400,)),
    ("a JSON array for a body", chat_bytes(b"[1, 2, 3]"), (400,)),
    ("Content-Length and Transfer-Encoding together",
     chat_bytes(FAST, b"Transfer-Encoding: chunked\r\n"), (400,)),
    ("two different Content-Lengths", chat_bytes(FAST, b"Content-Length: 5\r\n"), (400,)),
    ("a negative Content-Length", chat_bytes(FAST).replace(
        b"Content-Length: %d" % len(FAST), b"Content-Length: -1"), (400,)),
    ("a Content-Length of 10^30", chat_bytes(FAST).replace(
        b"Content-Length: %d" % len(FAST), b"Content-Length: " + b"9" * 30), (400, 413)),
    ("a bad chunk size", b"POST /v1/chat/completions HTTP/1.1\r\nHost: h\r\n"
     b"Transfer-Encoding: chunked\r\n\r\nzz\r\n" + FAST + b"\r\n0\r\n\r\n", (400,)),
    ("Transfer-Encoding: gzip, chunked", chat_bytes(FAST).replace(
        b"Content-Length: %d" % len(FAST), b"Transfer-Encoding: gzip, chunked"), (400, 501)),
    ("a header without a colon", chat_bytes(FAST, b"NoColonHere\r\n"), (400,)),
    ("a space before the colon", chat_bytes(FAST, b"X-Bad : v\r\n"), (400,)),
    ("a bare LF line ending", chat_bytes(FAST).replace(b"Host: hostile\r\n", b"Host: h\n"),
     (200, 400)),
    ("a header of 200 KB", chat_bytes(FAST, b"X-Big: " + b"a" * 200_000 + b"\r\n"), (431,)),
    ("10,000 headers", chat_bytes(FAST, *(b"X-H%d: v\r\n" % i for i in range(10_000))),
     (431,)),
    ("a URL of 100 KB", chat_bytes(FAST, path=b"/v1/" + b"a" * 100_000), (431,)),
    ("HTTP/0.9-style request line", b"GET /\r\n\r\n", (400, 404)),
    ("an unknown method", b"BREW /v1/models HTTP/1.1\r\nHost: h\r\n\r\n", (400, 405)),
    # Refused from its Content-Length; kept alive, so the server must close the connection
    # itself once the unread body is past (its keep-alive timeout).
    ("a body over the 4 MiB limit", chat_bytes(b'{"model":"fast","messages":"'
                                               + b"a" * (5 << 20) + b'"}', close=False), (413,)),
]


async def test_bad_requests_get_a_4xx_and_the_server_goes_on(gateway: Server,
                                                             record: Row) -> None:
    port = port_of(gateway)
    seen = []
    for name, data, expected in CASES:
        answer = await raw_exchange(port, data)
        status = int(answer[9:12]) if answer.startswith(b"HTTP/1.1 ") else 0
        seen.append((name, status, expected, answer[:120]))
    served = await latencies(gateway, 3)
    wrong = [(name, status, answer) for name, status, expected, answer in seen
             if status not in expected]
    record.inputs = "; ".join(f"{name} -> {status}" for name, status, *_ in seen)
    record.held = f"{len(CASES)} malformed requests, then {len(served)} ordinary ones served"
    record.measured = f"server log: {len(no_tracebacks(gateway))} errors or tracebacks"
    assert not wrong, wrong
    assert not no_tracebacks(gateway), no_tracebacks(gateway)[:10]


# ----- slow clients -----


async def slow_client(port: int, kind: str) -> tuple[str, float | None, bytes]:
    """A client that never finishes its request: how long until the server answered, and
    what it answered (None: it never did within the wait)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    request = chat_bytes(FAST)
    head_end = request.index(b"\r\n\r\n") + 4
    if kind == "body":
        writer.write(request[:head_end])
    trickle = request[:head_end - 2] if kind == "head" else request[head_end:-1]

    async def drip() -> None:
        for byte in trickle:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.5)

    dripping = asyncio.ensure_future(drip()) if kind != "silent" else None
    try:
        answer = await asyncio.wait_for(reader.read(200), HEAD_TIMEOUT_S + BODY_TIMEOUT_S + 10)
        return kind, time.monotonic() - started, answer
    except (TimeoutError, ConnectionError):
        return kind, None, b""
    finally:
        if dripping is not None:
            dripping.cancel()
        writer.close()


async def test_slow_clients_are_cut_off_and_others_served(gateway: Server,
                                                          record: Row) -> None:
    port = port_of(gateway)
    before = await latencies(gateway)
    kinds = ["silent", "head", "body"] * (SLOW_CLIENTS // 3)
    slow = asyncio.gather(*(slow_client(port, kind) for kind in kinds))
    await asyncio.sleep(0.5)
    during = await latencies(gateway)
    results = await slow
    deadline = {"silent": HEAD_TIMEOUT_S, "head": HEAD_TIMEOUT_S, "body": BODY_TIMEOUT_S}
    late = [(kind, took, answer) for kind, took, answer in results
            if took is None or took > deadline[kind] + 1.5
            or not answer.startswith(b"HTTP/1.1 408")]
    p50_before, p50_during = statistics.median(before), statistics.median(during)
    worst = max(took for _, took, _ in results if took is not None)
    record.held = (f"{SLOW_CLIENTS} slow clients (silent, a head byte every 0.5 s, a body "
                   f"byte every 0.5 s) beside {LATENCY_SAMPLES} ordinary requests")
    record.inputs = "slowloris heads and bodies"
    record.measured = (f"each cut off with a 408 after at most {worst:.1f} s (deadlines "
                       f"{HEAD_TIMEOUT_S:g} s / {BODY_TIMEOUT_S:g} s); ordinary request p50 "
                       f"{p50_before * 1000:.1f} ms before, {p50_during * 1000:.1f} ms during")
    assert not late, late[:10]
    assert p50_during <= 2 * p50_before + 0.02, (before, during)


# ----- idle SSE connections -----


async def idle_stream(port: int, opened: asyncio.Event, release: asyncio.Event) -> bool:
    """A stream of the idle model, held open until `release`; whether its first chunk came."""
    body = json.dumps({"model": "idle", "stream": True,
                       "messages": [{"role": "user", "content": "wait"}]}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(chat_bytes(body))
        await writer.drain()
        got = b""
        while b"data: " not in got:
            piece = await reader.read(4096)
            if not piece:
                return False
            got += piece
        opened.set()
        await release.wait()
        return got.startswith(b"HTTP/1.1 200")
    finally:
        writer.close()


async def test_idle_sse_connections(gateway: Server, record: Row) -> None:
    port = port_of(gateway)
    pid = gateway.process.pid
    before = await latencies(gateway)
    rss_before = resources(pid).rss
    release = asyncio.Event()
    opened = [asyncio.Event() for _ in range(IDLE_STREAMS)]
    streams = []
    for event in opened:
        streams.append(asyncio.ensure_future(idle_stream(port, event, release)))
        await asyncio.sleep(0.002)  # ~500 new connections a second
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in opened)), timeout=300)
    await asyncio.sleep(6)  # past a keep-alive interval: every stream has ticked once
    held = resources(pid)
    during = await latencies(gateway)
    release.set()
    ok = await asyncio.gather(*streams)
    p50_before, p50_during = statistics.median(before), statistics.median(during)
    per_stream = (held.rss - rss_before) / IDLE_STREAMS
    record.held = (f"{IDLE_STREAMS} concurrent idle SSE streams (an upstream that sends only "
                   f"comments) beside {LATENCY_SAMPLES} ordinary requests")
    record.measured = (f"gateway RSS {rss_before >> 20} -> {held.rss >> 20} MiB: "
                       f"{per_stream / 1024:.0f} KiB per idle stream, {held.fds} fds; ordinary "
                       f"request p50 {p50_before * 1000:.1f} ms before, "
                       f"{p50_during * 1000:.1f} ms during")
    assert sum(ok) == IDLE_STREAMS
    assert p50_during <= 2 * p50_before + 0.02, (before, during)
    assert not no_tracebacks(gateway), no_tracebacks(gateway)[:10]

