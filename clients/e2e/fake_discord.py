"""A fake Discord on loopback that judges every IDENTIFY on arrival.

REST: ``GET /api/v10/gateway/bot`` (its ``session_start_limit`` counts the IDENTIFYs
it saw), ``/users/@me`` and ``/oauth2/applications/@me`` (discord.py's login).
Gateway (``/gateway``): HELLO; HEARTBEAT answered with ACK; IDENTIFY answered with
READY; RESUME of a live session answered with RESUMED, any other with
INVALID_SESSION. Its own routes (``/fake/...``) let a scenario invalidate sessions.

The judge is Discord's rules as this project reads them (``src/rules.rs``): in each
bucket (``shard % max_concurrency``) consecutive IDENTIFYs at least ``interval``
apart, less ``tolerance`` for the loopback's jitter; no more IDENTIFYs than the
budget; one IDENTIFY per connection. Instants are this process's monotonic clock at
the frame's arrival.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from aiohttp import WSMsgType, web

def json_response(body: object) -> web.Response:
    # discord.py compares the Content-Type string exactly (http.py): no charset.
    return web.Response(body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})


@dataclass
class Identify:
    shard: int
    at: float  # monotonic seconds
    connection: int
    violations: List[str] = field(default_factory=list)


class FakeDiscord:
    def __init__(self, *, shards: int, max_concurrency: int, interval: float, total: int = 1000,
                 tolerance: float = 0.030, heartbeat_interval_ms: int = 41250) -> None:
        self.shards = shards
        self.max_concurrency = max_concurrency
        self.interval = interval
        self.total = total
        self.tolerance = tolerance
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.identifies: List[Identify] = []
        self.connections = 0
        self.closed_by_client = 0
        self._ids = itertools.count(1)
        self._last: Dict[int, float] = {}
        self._live: Dict[int, web.WebSocketResponse] = {}  # shard -> its connection
        self._sessions: Dict[str, int] = {}
        self.url = ""

    # -- judging --------------------------------------------------------------------

    def _judge(self, shard: int, connection: int, identified_before: bool) -> Identify:
        now = time.monotonic()
        verdict = Identify(shard, now, connection)
        bucket = shard % self.max_concurrency
        last = self._last.get(bucket)
        if last is not None and now - last < self.interval - self.tolerance:
            verdict.violations.append(f"spacing: bucket {bucket} {1000 * (now - last):.1f} ms after its last")
        if identified_before:
            verdict.violations.append("a second IDENTIFY on one connection")
        if len(self.identifies) >= self.total:
            verdict.violations.append("over the budget")
        self._last[bucket] = now
        self.identifies.append(verdict)
        return verdict

    @property
    def violations(self) -> List[str]:
        return [f"shard {i.shard}: {v}" for i in self.identifies for v in i.violations]

    def makespan(self, since: int = 0) -> Optional[float]:
        """Seconds from the first IDENTIFY (from index ``since``) to the last."""
        seen = self.identifies[since:]
        return seen[-1].at - seen[0].at if len(seen) >= 2 else None

    # -- REST -----------------------------------------------------------------------

    async def gateway_bot(self, request: web.Request) -> web.Response:
        body = {
            "url": self.url.replace("http", "ws", 1) + "/gateway",
            "shards": self.shards,
            "session_start_limit": {
                "total": self.total,
                "remaining": max(0, self.total - len(self.identifies)),
                "reset_after": 86_400_000,
                "max_concurrency": self.max_concurrency,
            },
        }
        return json_response(body)

    async def users_me(self, request: web.Request) -> web.Response:
        return json_response(_USER)

    async def application_me(self, request: web.Request) -> web.Response:
        body = {"id": "1", "name": "fake", "flags": 0, "bot_public": True, "bot_require_code_grant": False,
                "description": "", "icon": None, "verify_key": "", "owner": _USER, "team": None}
        return json_response(body)

    # -- gateway --------------------------------------------------------------------

    async def gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        connection = next(self._ids)
        self.connections += 1
        shard: Optional[int] = None
        identified = False
        seq = 0
        await ws.send_json({"op": 10, "d": {"heartbeat_interval": self.heartbeat_interval_ms}, "s": None, "t": None})
        try:
            async for message in ws:
                if message.type != WSMsgType.TEXT:
                    continue
                payload = json.loads(message.data)
                op, data = payload.get("op"), payload.get("d")
                if op == 1:
                    await ws.send_json({"op": 11, "d": None, "s": None, "t": None})
                elif op == 2:
                    shard = (data.get("shard") or [0, 1])[0]
                    self._judge(shard, connection, identified)
                    identified = True
                    session = f"s{connection}"
                    self._sessions[session] = shard
                    self._live[shard] = ws
                    seq += 1
                    await ws.send_json({"op": 0, "s": seq, "t": "READY", "d": {
                        "v": 10, "user": _USER, "guilds": [], "session_id": session,
                        "resume_gateway_url": self.url.replace("http", "ws", 1) + "/gateway",
                        "shard": data.get("shard") or [0, 1],
                        "application": {"id": "1", "flags": 0},
                        "private_channels": [], "relationships": [], "user_settings": {},
                        "presences": [], "guild_join_requests": [], "geo_ordered_rtc_regions": [],
                    }})
                elif op == 6:
                    session = (data or {}).get("session_id")
                    if session in self._sessions and self._sessions[session] is not None:
                        shard = self._sessions[session]
                        self._live[shard] = ws
                        seq += 1
                        await ws.send_json({"op": 0, "s": seq, "t": "RESUMED", "d": {}})
                    else:
                        await ws.send_json({"op": 9, "d": False, "s": None, "t": None})
        finally:
            if ws.close_code is not None and ws.close_code != 1000:
                self.closed_by_client += 1
            if shard is not None and self._live.get(shard) is ws:
                del self._live[shard]
        return ws

    async def invalidate(self, shards: List[int]) -> None:
        """INVALID_SESSION (not resumable) to each shard's live connection."""
        for shard in shards:
            ws = self._live.get(shard)
            for session, owner in list(self._sessions.items()):
                if owner == shard:
                    self._sessions[session] = None  # type: ignore[assignment]
            if ws is not None and not ws.closed:
                await ws.send_json({"op": 9, "d": False, "s": None, "t": None})

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> "FakeDiscord":
        app = web.Application()
        app.router.add_get("/api/v10/gateway/bot", self.gateway_bot)
        app.router.add_get("/api/v10/users/@me", self.users_me)
        app.router.add_get("/api/v10/oauth2/applications/@me", self.application_me)
        app.router.add_get("/gateway", self.gateway)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        for ws in list(self._live.values()):
            await ws.close()
        await self._runner.cleanup()


_USER = {"id": "1", "username": "fake", "discriminator": "0", "global_name": None, "avatar": None,
         "bot": True, "flags": 0, "mfa_enabled": False, "verified": True}
