"""A TCP proxy on loopback that plays a network between a bot and the server: delay
and jitter each way, a stall (nothing passes, nothing closes), a cut (every open
connection closed at once). Bytes keep their order: each chunk leaves at its arrival
plus its delay, or right after the chunk before it, whichever is later."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Optional, Set


class FaultProxy:
    def __init__(self, target_port: int, *, delay: float = 0.0, jitter: float = 0.0, seed: int = 1) -> None:
        self.target_port = target_port
        self.delay, self.jitter = delay, min(jitter, delay)
        self.stalled_until = 0.0
        self._random = random.Random(seed)
        self._connections: Set[asyncio.Task] = set()
        self.port = 0

    async def start(self) -> "FaultProxy":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stall(self, seconds: float) -> None:
        self.stalled_until = time.monotonic() + seconds

    def cut(self) -> None:
        for task in list(self._connections):
            task.cancel()

    async def stop(self) -> None:
        self.cut()
        self._server.close()
        await self._server.wait_closed()

    def _draw(self) -> float:
        return max(0.0, self.delay + self._random.uniform(-self.jitter, self.jitter))

    async def _serve(self, client_reader, client_writer) -> None:
        task = asyncio.current_task()
        self._connections.add(task)
        server_writer: Optional[asyncio.StreamWriter] = None
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            await asyncio.gather(self._pump(client_reader, server_writer), self._pump(server_reader, client_writer))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._connections.discard(task)
            for writer in (client_writer, server_writer):
                if writer is not None:
                    writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue = asyncio.Queue()

        async def read() -> None:
            last = 0.0
            while True:
                chunk = await reader.read(65536)
                last = max(last, time.monotonic() + self._draw())
                await queue.put((last, chunk))
                if not chunk:
                    return

        async def write() -> None:
            while True:
                at, chunk = await queue.get()
                while True:
                    wait = max(at, self.stalled_until) - time.monotonic()
                    if wait <= 0:
                        break
                    await asyncio.sleep(wait)
                if not chunk:
                    writer.write_eof() if writer.can_write_eof() else writer.close()
                    return
                writer.write(chunk)
                await writer.drain()

        await asyncio.gather(read(), write())
