"""Requests per second against a live server, like ``wrk -t1 -c4``: a few kept-alive connections, each sending
its next request as soon as the answer is in. asyncio and raw sockets keep the client's own cost small
(a fraction of a core), so the figure is the server's. ``rate(...)`` answers a Rate; not a test.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from dataclasses import field


@dataclass
class Rate:
    """What a timed run saw."""

    requests: int = 0
    seconds: float = 0.0
    statuses: dict = field(default_factory=dict)
    body_bytes: int = 0
    wire_bytes: int = 0
    errors: list = field(default_factory=list)
    client_cpu: float = 0.0  # this client's own CPU seconds over the run (it shares the cores with the server)

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


async def _connection(host: str, port: int, request: bytes, deadline: float, rate: Rate) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < deadline:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            lowered = head.lower()
            if b"\r\ntransfer-encoding:" in lowered and b"chunked" in lowered:
                raise RuntimeError("chunked answers are not supported by this client")
            at = lowered.find(b"\r\ncontent-length:")
            length = int(lowered[at + 17:lowered.index(b"\r\n", at + 2)]) if at >= 0 else 0
            body = await reader.readexactly(length) if length else b""
            rate.requests += 1
            rate.statuses[status] = rate.statuses.get(status, 0) + 1
            rate.body_bytes = len(body)
            rate.wire_bytes = len(head) + len(body)
    except (OSError, asyncio.IncompleteReadError, RuntimeError) as error:
        rate.errors.append(repr(error))
    finally:
        writer.close()


def rate(host: str, port: int, path: str, headers: dict | None = None, connections: int = 4,
         seconds: float = 3.0) -> Rate:
    """Hammer ``GET path`` for ``seconds`` over ``connections`` kept-alive connections."""
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}"] + [f"{name}: {value}" for name, value in (headers or {}).items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    result = Rate()

    async def run():
        deadline = time.perf_counter() + seconds
        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(_connection(host, port, request, deadline, result) for _ in range(connections)))
        result.seconds = time.perf_counter() - started
        result.client_cpu = time.process_time() - cpu

    asyncio.run(run())
    return result
