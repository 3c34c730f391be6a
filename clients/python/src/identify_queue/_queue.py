"""The queue: asks `identify-queue-server` when a shard may IDENTIFY."""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import logging
import os
import random
import re
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Set, Union

import aiohttp
import yarl

__all__ = ["Grant", "IdentifyQueue"]

_log = logging.getLogger("identify_queue")

#: The pause after a failure starts here and doubles to ``max_backoff``.
FIRST_BACKOFF = 0.1
#: A refusal only an operator can mend (400, 401, 404) is asked again at most this far apart.
MAX_REFUSED_BACKOFF = 30.0
#: The server's longest ``wait_ms`` is 25 s; the client stays below clients' and proxies' limits.
MAX_WAIT_MS = 20_000
#: Shorter polls would ask the server again and again for nothing.
MIN_WAIT_MS = 1_000
#: A poll's answer is due by its ``wait_ms``; past it by this much the request is given up as lost.
ANSWER_SLACK = 10.0
#: A cancel (``DELETE``) is bounded by this: a key nobody polls lapses within seconds anyway.
CANCEL_TIMEOUT = 2.0

_TOKEN_FORBIDDEN = re.compile(r"[\s\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Grant:
    """A shard's permission to IDENTIFY, as the server answered it."""

    shard_id: int
    #: The attempt's idempotency key.
    key: str
    #: When the server granted it, in Unix milliseconds.
    granted_at_ms: Optional[int]
    #: How long the request waited at the server, in milliseconds.
    waited_ms: Optional[int]


def _retry_after(value: Optional[str]) -> Optional[float]:
    """``Retry-After`` in seconds (a number of seconds, or an HTTP date), or None."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class IdentifyQueue:
    """A queue on one or several ``identify-queue-server`` instances (one server, or the
    servers of one Redis namespace).

    ``await queue.wait(shard_id)`` returns once the shard may IDENTIFY. It never raises
    for a failure it can retry: a server out of reach, restarting or refusing is asked
    again with backoff, over the URLs, for as long as it takes (an IDENTIFY sent
    without a grant is the failure that costs sessions). It speaks the server's native
    API: one idempotency key per attempt, polled with a ``wait_ms`` of at most 20 s, so
    the shard keeps its place across retries and failovers.

    Build one per process and share it: it remembers which shards were granted, and
    asks for their next IDENTIFYs as reconnects (served before their bucket's start-up).

    Raises :class:`ValueError` naming the argument for a bad URL or option.
    """

    def __init__(
        self,
        urls: Union[str, Iterable[str]],
        token: Optional[str] = None,
        *,
        wait_ms: int = MAX_WAIT_MS,
        max_backoff: float = 5.0,
        session: Optional[aiohttp.ClientSession] = None,
        logger: Optional[logging.Logger] = None,
    ) -> None:
        url_list: List[str] = [urls] if isinstance(urls, str) else list(urls)
        url_list = [url.rstrip("/") for url in url_list]
        if not url_list:
            raise ValueError("urls: empty; give at least one server URL")
        for url in url_list:
            try:
                parsed = yarl.URL(url)
            except (TypeError, ValueError):
                parsed = None
            if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
                raise ValueError(f"urls: {url!r} is not an http:// or https:// URL")
        if isinstance(wait_ms, bool) or not isinstance(wait_ms, int) or not MIN_WAIT_MS <= wait_ms <= MAX_WAIT_MS:
            raise ValueError(f"wait_ms: a whole number of ms from {MIN_WAIT_MS} to {MAX_WAIT_MS}, got {wait_ms!r}")
        if not isinstance(max_backoff, (int, float)) or not max_backoff >= FIRST_BACKOFF:
            raise ValueError(f"max_backoff: at least {FIRST_BACKOFF} s, got {max_backoff!r}")
        if token is not None and (token == "" or _TOKEN_FORBIDDEN.search(token)):
            raise ValueError("token: empty, or holds a space or a control character")
        self.urls: List[str] = url_list
        self._token = token
        self._wait_ms = wait_ms
        self._max_backoff = float(max_backoff)
        self._session = session
        self._owns_session = session is None
        self._log = logger or _log
        self._prefix = f"{os.getpid():x}.{int(time.time() * 1000):x}.{random.getrandbits(40):x}"
        self._attempts = itertools.count(1)
        self._next_url = itertools.count()
        self._granted: Set[int] = set()

    async def __aenter__(self) -> "IdentifyQueue":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the HTTP session the queue made (not one it was given). The queue
        can still be used afterwards: it opens a new one."""
        if self._owns_session and self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            if not self._owns_session:
                raise RuntimeError("the aiohttp session given to IdentifyQueue is closed")
            self._session = aiohttp.ClientSession()
        return self._session

    def _headers(self) -> Dict[str, str]:
        return {} if self._token is None else {"Authorization": f"Bearer {self._token}"}

    def _new_key(self, shard_id: int) -> str:
        return f"{self._prefix}.{shard_id}.{next(self._attempts)}"

    async def wait(
        self,
        shard_id: int,
        *,
        reconnect: Optional[bool] = None,
        on_waiting: Optional[Callable[[dict], None]] = None,
    ) -> Grant:
        """Waits until shard ``shard_id`` may IDENTIFY, and returns the grant.

        ``reconnect`` asks as a reconnect (``priority=reconnect``); by default, a shard
        this queue granted before asks as one. ``on_waiting`` is called with each
        ``202`` answer's JSON (``place``, ``eta_ms``); with it, the first poll is
        answered at once, so the estimate comes before the wait.

        Cancel safety: cancelling the wait (``task.cancel()``, ``asyncio.wait_for``,
        Ctrl-C under ``asyncio.run``) tells the server to drop the request (``DELETE``,
        awaited for at most 2 s), then raises :class:`asyncio.CancelledError`. Nothing
        is spent for it. A wait cancelled in the instant its grant is on the way counts
        as granted by the server (the safe side).
        """
        if isinstance(shard_id, bool) or not isinstance(shard_id, int) or not 0 <= shard_id < 2**32:
            raise ValueError(f"shard_id: a whole number in 0..2^32, got {shard_id!r}")
        if reconnect is None:
            reconnect = shard_id in self._granted
        priority = "reconnect" if reconnect else "start"
        key = self._new_key(shard_id)
        index = next(self._next_url) % len(self.urls)
        backoff = FIRST_BACKOFF
        polled_at: Optional[str] = None
        first_poll = True
        try:
            while True:
                url = self.urls[index]
                pause = 0.0
                move_on = False
                try:
                    polled_at = url
                    # With on_waiting, the first poll answers at once: the caller
                    # learns the wait's estimate before it waits.
                    wait_ms = 0 if on_waiting is not None and first_poll else self._wait_ms
                    first_poll = False
                    status, answer, retry_after = await self._poll(url, shard_id, key, priority, wait_ms)
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
                    self._log.warning(
                        "identify-queue: %s out of reach (%s); shard %d asks again in %.1f s",
                        url, error or type(error).__name__, shard_id, backoff,
                    )
                    pause, backoff, move_on = backoff, min(backoff * 2, self._max_backoff), True
                else:
                    if status == 200 and answer.get("granted") is True:
                        self._granted.add(shard_id)
                        self._log.debug("identify-queue: shard %d granted (key %s)", shard_id, key)
                        return Grant(shard_id, key, answer.get("granted_at"), answer.get("waited_ms"))
                    if status == 202:
                        backoff = FIRST_BACKOFF
                        if answer.get("held_by_another_server") is True:
                            # Its place is kept at the server that holds the key.
                            move_on = True
                        elif answer.get("ready") is False:
                            self._log.info(
                                "identify-queue: %s has no limit yet (%s); shard %d waits",
                                url, answer.get("reason"), shard_id,
                            )
                        elif on_waiting is not None:
                            try:
                                on_waiting(answer)
                            except Exception:  # a caller's bug must not end the wait
                                self._log.exception("identify-queue: on_waiting raised")
                    elif status == 410:
                        # Granted, but the answer was lost on the way: that grant is spent
                        # and its instant passed; IDENTIFYing now could come too close to
                        # its bucket's next grant. A new key asks again.
                        self._log.warning(
                            "identify-queue: shard %d's grant was lost on the way; asking again", shard_id,
                        )
                        key = self._new_key(shard_id)
                    elif status == 409:
                        # The shard waits under another key (an earlier attempt's, whose
                        # cancel was lost, or another process's); it lapses within its lease.
                        self._log.warning(
                            "identify-queue: shard %d waits at %s under another key (%s); asking again",
                            shard_id, url, answer.get("error"),
                        )
                        pause = backoff = min(backoff * 2, self._max_backoff)
                    elif status in (429, 503):
                        self._log.warning(
                            "identify-queue: %s answered %d (%s); shard %d asks again later",
                            url, status, answer.get("error"), shard_id,
                        )
                        pause = max(retry_after or 0.0, backoff)
                        backoff = min(backoff * 2, self._max_backoff)
                        move_on = status == 503
                    elif status >= 500:
                        self._log.warning(
                            "identify-queue: %s answered %d; shard %d asks again", url, status, shard_id,
                        )
                        pause, backoff, move_on = backoff, min(backoff * 2, self._max_backoff), True
                    else:
                        # 400, 401, 403, 404 (no native API there): an operator must act.
                        # Raising would let the caller IDENTIFY unthrottled; it asks again
                        # slowly and says so loudly.
                        hint = " (check the token against the server's --auth-token)" if status in (401, 403) else ""
                        self._log.error(
                            "identify-queue: %s refused shard %d with %d: %s%s; asking again in %.1f s",
                            url, shard_id, status, answer.get("error"), hint, backoff,
                        )
                        pause, backoff, move_on = backoff, min(backoff * 2, MAX_REFUSED_BACKOFF), True
                if move_on:
                    index = (index + 1) % len(self.urls)
                if pause > 0:
                    await asyncio.sleep(pause)
        except BaseException:
            # Cancelled (or the loop is going down): the server drops the key now
            # rather than at its lease's end. Awaited here, shielded and bounded, so a
            # Ctrl-C under asyncio.run still reaches the server before the loop closes.
            if polled_at is not None:
                try:
                    await asyncio.wait_for(asyncio.shield(self._cancel(polled_at, key)), CANCEL_TIMEOUT)
                except BaseException:
                    pass
            raise

    async def _poll(self, url: str, shard_id: int, key: str, priority: str, wait_ms: int):
        params = {"shard": str(shard_id), "key": key, "priority": priority, "wait_ms": str(wait_ms)}
        timeout = aiohttp.ClientTimeout(total=wait_ms / 1000 + ANSWER_SLACK)
        async with self._http().post(
            f"{url}/v1/identify", params=params, headers=self._headers(), timeout=timeout
        ) as response:
            try:
                answer = await response.json(content_type=None)
            except ValueError:
                answer = None
            if not isinstance(answer, dict):
                answer = {}
            return response.status, answer, _retry_after(response.headers.get("Retry-After"))

    async def _cancel(self, url: str, key: str) -> None:
        try:
            async with self._http().delete(
                f"{url}/v1/identify/{key}",
                headers=self._headers(),
                timeout=aiohttp.ClientTimeout(total=CANCEL_TIMEOUT),
            ) as response:
                await response.read()
                self._log.debug("identify-queue: cancelled key %s (%d)", key, response.status)
        except Exception as error:  # the key lapses on its own within its lease
            self._log.debug("identify-queue: the cancel of key %s did not reach %s: %s", key, url, error)
