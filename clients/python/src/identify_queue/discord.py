"""discord.py's side: every IDENTIFY of an ``AutoShardedClient`` through the queue.

.. code-block:: python

    import discord
    from identify_queue.discord import IdentifyQueueMixin

    class Bot(IdentifyQueueMixin, discord.AutoShardedClient):
        identify_queue_url = "http://queue:8000"

    Bot(intents=discord.Intents.default(), heartbeat_timeout=150).run(TOKEN)

What it does that a few lines of ``before_identify_hook`` would not:

- asks for every shard, the first one too (discord.py passes ``initial=True`` to the
  first shard it launches, and its default hook skips the wait for it);
- never raises for a failure it can retry (discord.py would retry the shard after 5 s,
  at the back of the queue), and keeps the shard's place across the retries;
- ``close()`` during a start-up cancels the waits (nothing left at the server, nothing
  granted after) and stops the shard launch loop, so ``start()`` returns and the
  process exits (discord.py alone keeps launching shards for ever);
- asks for a shard's later IDENTIFYs as reconnects, served before its bucket's start-up;
- warns when a wait may outlast ``heartbeat_timeout``: discord.py asks the hook after
  the gateway's HELLO and reads nothing while it waits, so a wait longer than
  ``heartbeat_timeout`` (60 s by default) closes the socket and wastes the grant. Set
  ``heartbeat_timeout`` above the longest wait you expect: with Discord's 5 s per
  bucket turn, about 5 s per request that may wait ahead of a shard in its bucket
  (150 s covers thirty). It also delays noticing a dead connection by as much.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Any, Optional, Sequence, Set, Union

# Imported first so that a missing discord.py fails here, with its own name in the error.
import discord  # noqa: F401

from ._queue import IdentifyQueue

__all__ = ["IdentifyQueueMixin"]

_log = logging.getLogger("identify_queue.discord")


class IdentifyQueueMixin:
    """Mix in before ``discord.AutoShardedClient`` (or ``discord.Client``).

    Configure with the class attributes, or the keyword arguments of the same names:

    - ``identify_queue_url``: the server's URL, or a list of the URLs of one
      namespace's servers (required);
    - ``identify_queue_token``: the server's ``--auth-token``, if it has one.

    The queue is :attr:`identify_queue` (an :class:`~identify_queue.IdentifyQueue`).
    """

    identify_queue_url: Union[str, Sequence[str], None] = None
    identify_queue_token: Optional[str] = None

    def __init__(
        self,
        *args: Any,
        identify_queue_url: Union[str, Sequence[str], None] = None,
        identify_queue_token: Optional[str] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        urls = identify_queue_url or self.identify_queue_url
        if not urls:
            raise ValueError(
                "identify_queue_url: not set; give the identify-queue-server URL as a class "
                "attribute or keyword argument"
            )
        self.identify_queue = IdentifyQueue(
            urls, identify_queue_token or self.identify_queue_token, logger=logging.getLogger("identify_queue")
        )
        self._identify_waits: Set[asyncio.Task] = set()
        self._identify_launching: Optional[asyncio.Task] = None
        self._identify_closing = False

    async def before_identify_hook(self, shard_id: Optional[int], *, initial: bool = False) -> None:
        """Waits for the queue's grant for ``shard_id`` (every shard, ``initial`` or not)."""
        shard = shard_id or 0
        if self._identify_closing:
            raise asyncio.CancelledError()
        heartbeat_timeout = float(getattr(self._connection, "heartbeat_timeout", 60.0))  # type: ignore[attr-defined]
        started = time.monotonic()
        warned = False

        def on_waiting(answer: dict) -> None:
            nonlocal warned
            eta_ms = answer.get("eta_ms")
            if warned or not isinstance(eta_ms, (int, float)):
                return
            waited = time.monotonic() - started
            if waited + eta_ms / 1000 >= heartbeat_timeout:
                warned = True
                _log.warning(
                    "shard %d's IDENTIFY may wait %.0f s in the queue (%.0f s so far), past "
                    "heartbeat_timeout (%.0f s): discord.py closes the socket while it waits "
                    "and the grant is wasted. Set heartbeat_timeout above the longest wait "
                    "(e.g. AutoShardedClient(..., heartbeat_timeout=150)).",
                    shard, waited + eta_ms / 1000, waited, heartbeat_timeout,
                )

        # A task of its own, so that close() can cancel it from outside.
        wait = asyncio.ensure_future(self.identify_queue.wait(shard, on_waiting=on_waiting))
        self._identify_waits.add(wait)
        try:
            await wait
        finally:
            self._identify_waits.discard(wait)

    async def launch_shards(self) -> None:
        """discord.py's shard launch loop, run so that :meth:`close` can stop it."""
        launching = asyncio.ensure_future(super().launch_shards())  # type: ignore[misc]
        self._identify_launching = launching
        try:
            await launching
        except asyncio.CancelledError:
            # Stopped by close(): connect() goes on, sees the client closed, returns.
            # Any other cancel (Ctrl-C) goes on up.
            current = asyncio.current_task()
            cancelling = current.cancelling() if current is not None and sys.version_info >= (3, 11) else 0
            if self._identify_closing and launching.cancelled() and not cancelling:
                return
            raise
        finally:
            self._identify_launching = None

    async def close(self) -> None:
        """Cancels the waits (the server drops them) and the shard launch loop, then
        closes the client and the queue's HTTP session."""
        self._identify_closing = True
        current = asyncio.current_task()
        pending = [task for task in self._identify_waits if task is not current]
        launching = self._identify_launching
        if launching is not None and launching is not current:
            pending.append(launching)
        for task in pending:
            task.cancel()
        if pending:
            # Each cancelled wait tells the server (at most 2 s each, concurrently).
            await asyncio.wait(pending, timeout=5.0)
        await super().close()  # type: ignore[misc]
        await self.identify_queue.close()
