"""The client's own logic (retries, keys, cancels, priorities, arguments) against a
scripted HTTP server on loopback: each test scripts the answers and asserts what the
client sent. The real server and discord.py are met in clients/e2e."""

import asyncio
import re
import time

import pytest
from aiohttp import web

from identify_queue import IdentifyQueue


class Scripted:
    """A server answering each request with ``script(request_info, index)``:
    ``(status, body[, headers])``, ``"cut"`` (the connection closed) or ``"hang"``."""

    def __init__(self, script):
        self.script = script
        self.seen = []

    async def handle(self, request):
        entry = {
            "method": request.method,
            "path": request.path,
            "query": dict(request.query),
            "auth": request.headers.get("Authorization"),
        }
        self.seen.append(entry)
        answer = self.script(entry, len(self.seen) - 1)
        if answer == "cut":
            request.transport.close()
            await asyncio.sleep(3600)
        if answer == "hang":
            await asyncio.sleep(3600)
        status, body, *headers = answer
        return web.json_response(body, status=status, headers=headers[0] if headers else None)

    async def __aenter__(self):
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc):
        await self.runner.cleanup()


def granted(query):
    return 200, {"granted": True, "shard": int(query["shard"]), "key": query["key"], "granted_at": 1, "waited_ms": 0}


WAITING = (202, {"granted": False, "place": 1, "eta_ms": 1000})


def run(coro):
    return asyncio.run(coro)


def test_a_202_is_polled_again_under_the_same_key():
    async def main():
        async with Scripted(lambda r, i: WAITING if i < 2 else granted(r["query"])) as server:
            seen_waits = []
            async with IdentifyQueue(server.url) as queue:
                grant = await queue.wait(3, on_waiting=seen_waits.append)
            assert grant.shard_id == 3 and grant.granted_at_ms == 1
            assert len(server.seen) == 3
            assert len({r["query"]["key"] for r in server.seen}) == 1, "one key across polls"
            assert [w["eta_ms"] for w in seen_waits] == [1000, 1000]
            # With on_waiting the first poll is answered at once (the estimate first).
            assert [r["query"]["wait_ms"] for r in server.seen] == ["0", "20000", "20000"]
            for r in server.seen:
                assert (r["method"], r["path"]) == ("POST", "/v1/identify")
                assert r["query"]["shard"] == "3"
                assert r["query"]["priority"] == "start"
                assert re.fullmatch(r"[A-Za-z0-9._~-]{1,128}", r["query"]["key"])

    run(main())


def test_a_shard_granted_before_asks_as_a_reconnect_under_a_new_key():
    async def main():
        async with Scripted(lambda r, i: granted(r["query"])) as server:
            async with IdentifyQueue(server.url) as queue:
                await queue.wait(1)
                await queue.wait(2)
                await queue.wait(1)
                await queue.wait(2, reconnect=False)
            assert [r["query"]["priority"] for r in server.seen] == ["start", "start", "reconnect", "start"]
            assert {r["query"]["wait_ms"] for r in server.seen} == {"20000"}
            assert len({r["query"]["key"] for r in server.seen}) == 4

    run(main())


def test_a_410_asks_again_with_a_new_key():
    async def main():
        script = lambda r, i: (410, {"error": "answered", "granted_at": 1}) if i == 0 else granted(r["query"])
        async with Scripted(script) as server:
            async with IdentifyQueue(server.url) as queue:
                await queue.wait(0)
            assert len(server.seen) == 2
            assert server.seen[0]["query"]["key"] != server.seen[1]["query"]["key"]

    run(main())


def test_failures_are_asked_again_never_raised(caplog):
    answers = ["cut", (500, {}), (401, {"error": "token"}), (404, {}), (409, {"error": "other"}), (400, {})]

    async def main():
        script = lambda r, i: answers[i] if i < len(answers) else granted(r["query"])
        async with Scripted(script) as server:
            start = time.monotonic()
            async with IdentifyQueue(server.url, token="secret") as queue:
                await queue.wait(5)
            elapsed = time.monotonic() - start
            assert len(server.seen) == len(answers) + 1
            assert all(r["auth"] == "Bearer secret" for r in server.seen)
            assert len({r["query"]["key"] for r in server.seen}) == 1, "the key is kept through failures"
            # 0.1 + 0.2 + 0.4 + 0.8 + 1.6 + 3.2 s of backoff.
            assert elapsed >= 6.0, elapsed

    run(main())
    assert any("--auth-token" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)


def test_a_retry_after_is_honoured():
    async def main():
        script = lambda r, i: (429, {"error": "full"}, {"Retry-After": "1"}) if i == 0 else granted(r["query"])
        async with Scripted(script) as server:
            start = time.monotonic()
            async with IdentifyQueue(server.url) as queue:
                await queue.wait(0)
            assert time.monotonic() - start >= 0.99

    run(main())


def test_a_server_out_of_reach_is_asked_again_and_other_urls_tried():
    async def main():
        async with Scripted(lambda r, i: (200, {})) as down:
            down_url = down.url
        async with Scripted(lambda r, i: granted(r["query"])) as up:
            async with IdentifyQueue([down_url, up.url]) as queue:
                await queue.wait(7)
                await queue.wait(8)
            assert len(up.seen) == 2

    run(main())


def test_a_key_held_by_another_server_moves_to_the_next_url_same_key():
    async def main():
        async with Scripted(lambda r, i: (202, {"granted": False, "held_by_another_server": True})) as a:
            async with Scripted(lambda r, i: granted(r["query"])) as b:
                async with IdentifyQueue([a.url, b.url]) as queue:
                    await queue.wait(2)
                assert len(a.seen) == 1
                assert b.seen[0]["query"]["key"] == a.seen[0]["query"]["key"]

    run(main())


def test_a_cancelled_wait_deletes_its_key_and_raises_cancelled():
    async def main():
        script = lambda r, i: (204, {}) if r["method"] == "DELETE" else "hang"
        async with Scripted(script) as server:
            async with IdentifyQueue(server.url) as queue:
                wait = asyncio.ensure_future(queue.wait(4))
                await asyncio.sleep(0.2)
                wait.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await wait
                # The DELETE was awaited before the cancel went up.
                assert [r["method"] for r in server.seen] == ["POST", "DELETE"]
                assert server.seen[1]["path"] == f"/v1/identify/{server.seen[0]['query']['key']}"

    run(main())


def test_a_wait_for_timeout_cancels_too():
    async def main():
        script = lambda r, i: (204, {}) if r["method"] == "DELETE" else WAITING
        async with Scripted(script) as server:
            async with IdentifyQueue(server.url) as queue:
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(queue.wait(4), 0.3)
            assert server.seen[-1]["method"] == "DELETE"

    run(main())


def test_bad_arguments_raise_naming_the_argument():
    with pytest.raises(ValueError, match="urls"):
        IdentifyQueue([])
    with pytest.raises(ValueError, match="urls"):
        IdentifyQueue("queue:8000")
    with pytest.raises(ValueError, match="wait_ms"):
        IdentifyQueue("http://q", wait_ms=25_000)
    with pytest.raises(ValueError, match="wait_ms"):
        IdentifyQueue("http://q", wait_ms=True)
    with pytest.raises(ValueError, match="wait_ms"):
        IdentifyQueue("http://q", wait_ms=0)
    with pytest.raises(ValueError, match="max_backoff"):
        IdentifyQueue("http://q", max_backoff=0)
    with pytest.raises(ValueError, match="token"):
        IdentifyQueue("http://q", token="a b")
    assert IdentifyQueue("http://q/").urls == ["http://q"]

    async def main():
        queue = IdentifyQueue("http://127.0.0.1:9")
        for bad in (-1, 2**32, 1.5, "3", True):
            with pytest.raises(ValueError, match="shard_id"):
                await queue.wait(bad)

    run(main())
