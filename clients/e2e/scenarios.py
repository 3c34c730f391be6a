"""Bots made with the real libraries (@discordjs/ws, discord.js, discord.py, pinned),
each using this repo's client package the way its README says, against the real
`identify-queue-server` binary and a fake Discord that judges every IDENTIFY.

    python scenarios.py            # every scenario; a table, and exit 1 on a failure
    python scenarios.py py-16 ...  # some

Env: IDENTIFY_QUEUE_SERVER (the binary; target/debug's by default). Run inside the
venv of requirements.txt with clients/python installed, after `npm ci` here.

Scale: Discord's 5 s per bucket is 1 s here (the judge's interval), less 30 ms of
tolerance for loopback jitter; the server spaces grants by 1,000 ms and a 50 ms margin.
The optimum of N IDENTIFYs in B buckets is (N/B - 1) turns.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import aiohttp

from fake_discord import FakeDiscord
from fault_proxy import FaultProxy

HERE = Path(__file__).resolve().parent
SERVER = os.environ.get("IDENTIFY_QUEUE_SERVER", str(HERE.parents[1] / "target/debug/identify-queue-server"))
INTERVAL = 1.0
MARGIN = 0.05
#: Discord's HELLO says 41,250 ms; at the same 1:30 scale as the interval (1 s for 5 s
#: would be 1:5, but discord.py's heartbeat_timeout, 60 s, is the time that matters).
HEARTBEAT_INTERVAL_MS = 1375
#: "Within a few percent of the optimum plus the margin".
MAKESPAN_SLACK = 1.05
LOGS = Path(os.environ.get("E2E_LOGS", "/tmp/identify-queue-e2e"))


class Failed(AssertionError):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise Failed(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The real binary, reading its limit from the fake's `GET /gateway/bot`."""

    def __init__(self, fake: FakeDiscord, port: int = 0, name: str = "server", token: Optional[str] = None) -> None:
        self.fake, self.port, self.name, self.token = fake, port, name, token

    async def start(self) -> "Server":
        LOGS.mkdir(parents=True, exist_ok=True)
        self.log = open(LOGS / f"{self.name}.log", "ab")
        self.process = await asyncio.create_subprocess_exec(
            SERVER, "--host", "127.0.0.1", "--port", str(self.port),
            "--discord-token", "fake-token", "--discord-api", f"{self.fake.url}/api/v10",
            "--interval-ms", str(int(INTERVAL * 1000)), "--margin-ms", str(int(MARGIN * 1000)),
            *(["--auth-token", self.token] if self.token else []),
            stdout=asyncio.subprocess.PIPE, stderr=self.log,
        )
        line = (await asyncio.wait_for(self.process.stdout.readline(), 30)).decode()
        check(line.startswith("identify-queue-server listening on"), f"server's first line: {line!r}")
        self.port = int(line.rsplit(":", 1)[1])
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    async def status(self) -> dict:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        async with aiohttp.ClientSession(headers=headers) as http:
            async with http.get(f"{self.url}/v1/status") as response:
                return await response.json()

    async def wait_ready(self) -> None:
        for _ in range(300):
            try:
                if (await self.status())["ready"]:
                    return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
        raise Failed("the server never became ready")

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(self.process.wait(), 10)
        self.log.close()


class Bot:
    COMMANDS = {
        "ws": ["node", "js/ws-bot.mjs"],
        "djs": ["node", "js/djs-client.mjs"],
        "py": [sys.executable, "py/bot.py"],
    }
    NAMES = {"ws": "@discordjs/ws", "djs": "discord.js Client", "py": "discord.py"}

    def __init__(self, kind: str, fake: FakeDiscord, queue: str, shards: int, shard_ids: str,
                 env: Optional[Dict[str, str]] = None, name: Optional[str] = None) -> None:
        self.kind = kind
        self.name = name or kind
        self.env = {**os.environ, "FAKE": fake.url, "QUEUE": queue, "SHARDS": str(shards),
                    "SHARD_IDS": shard_ids, **(env or {})}
        self.ready: List[int] = []
        self.stopped = False  # it printed its last line: stopped cleanly
        self.stderr = b""

    async def start(self) -> "Bot":
        LOGS.mkdir(parents=True, exist_ok=True)
        self.process = await asyncio.create_subprocess_exec(
            *self.COMMANDS[self.kind], cwd=HERE, env=self.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        self._readers = [asyncio.ensure_future(self._read()), asyncio.ensure_future(self._read_stderr())]
        return self

    async def _read(self) -> None:
        async for line in self.process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if "ready" in event:
                self.ready.append(event["ready"])
            self.stopped |= event.get("stopped") is True

    async def _read_stderr(self) -> None:
        async for line in self.process.stderr:
            self.stderr += line

    async def wait_ready(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(set(self.ready)) < count:
            check(self.process.returncode is None, f"{self.name} exited: {self.stderr[-2000:].decode()}")
            check(time.monotonic() < deadline, f"{self.name}: {len(set(self.ready))} of {count} READY in {timeout} s")
            await asyncio.sleep(0.02)

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> float:
        """Sends `sig` and waits for the process to exit; returns how long it took."""
        start = time.monotonic()
        if self.process.returncode is None:
            self.process.send_signal(sig)
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except asyncio.TimeoutError:
                self.process.kill()
                await self.process.wait()
                raise Failed(f"{self.name} did not exit within {timeout} s of signal {sig}")
        await asyncio.gather(*self._readers)
        (LOGS / f"{self.name}.stderr").write_bytes(self.stderr)
        return time.monotonic() - start


async def start_fake(shards: int, max_concurrency: int = 4) -> FakeDiscord:
    """A fake Discord at this file's scale (its interval, its heartbeat interval)."""
    return await FakeDiscord(shards=shards, max_concurrency=max_concurrency, interval=INTERVAL,
                             heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS).start()


def optimum(identifies: int, buckets: int) -> float:
    """The shortest makespan at the server's spacing (interval plus margin)."""
    return (-(-identifies // buckets) - 1) * (INTERVAL + MARGIN)


def row(fake: FakeDiscord, **more) -> dict:
    makespan = fake.makespan()
    return {"identifies": len(fake.identifies), "violations": len(fake.violations),
            "makespan_s": None if makespan is None else round(makespan, 3), **more}


async def sixteen(kind: str, env: Optional[Dict[str, str]] = None) -> dict:
    """16 shards, max_concurrency 4: every shard READY, 0 violations, makespan near the optimum."""
    fake = await start_fake(16)
    server = await Server(fake).start()
    bot = await Bot(kind, fake, server.url, 16, "0-15", env).start()
    try:
        await bot.wait_ready(16)
        status = await server.status()
        best = optimum(16, 4)
        check(fake.makespan() <= best * MAKESPAN_SLACK, f"makespan {fake.makespan():.3f} s, optimum {best:.2f} s")
        check(status["granted"] == len(fake.identifies) == 16, f"granted {status['granted']}, IDENTIFYs {len(fake.identifies)}")
        return row(fake, optimum_s=best, granted=status["granted"])
    finally:
        await bot.stop()
        await server.stop()
        await fake.stop()


async def both_libraries() -> dict:
    """@discordjs/ws (shards 0-15) and discord.py (16-31) of one bot on one server,
    which wants a token (`--auth-token`; each client sends it)."""
    fake = await start_fake(32)
    server = await Server(fake, token="e2e-s3cret").start()
    token = {"QUEUE_TOKEN": "e2e-s3cret"}
    js = await Bot("ws", fake, server.url, 32, "0-15", token).start()
    py = await Bot("py", fake, server.url, 32, "16-31", token).start()
    try:
        await asyncio.gather(js.wait_ready(16), py.wait_ready(16))
        best = optimum(32, 4)
        check(fake.makespan() <= best * MAKESPAN_SLACK, f"makespan {fake.makespan():.3f} s, optimum {best:.2f} s")
        return row(fake, optimum_s=best, granted=(await server.status())["granted"])
    finally:
        await asyncio.gather(js.stop(), py.stop())
        await server.stop()
        await fake.stop()


async def unreachable_first(kind: str, env: Optional[Dict[str, str]] = None) -> dict:
    """The server is unreachable for the first 3 s, then up: every shard READY, 0 violations."""
    fake = await start_fake(16)
    port = free_port()
    bot = await Bot(kind, fake, f"http://127.0.0.1:{port}", 16, "0-15", env).start()
    await asyncio.sleep(3)
    before = len(fake.identifies)
    server = await Server(fake, port).start()
    try:
        if env and env.get("NAIVE"):
            await asyncio.sleep(5)
            return row(fake, identifies_while_down=before, connections=fake.connections)
        check(before == 0, f"{before} IDENTIFYs while the server was down")
        await bot.wait_ready(16)
        return row(fake, identifies_while_down=before, connections=fake.connections)
    finally:
        await bot.stop()
        await server.stop()
        await fake.stop()


async def server_restarted(kind: str) -> dict:
    """The server restarted (SIGTERM, a new one on the port 0.3 s later) mid-start-up."""
    fake = await start_fake(16)
    server = await Server(fake, name="server-1").start()
    bot = await Bot(kind, fake, server.url, 16, "0-15").start()
    try:
        await bot.wait_ready(5)
        ready_at_restart = len(set(bot.ready))
        await server.stop()
        await asyncio.sleep(0.3)
        server = await Server(fake, server.port, name="server-2").start()
        await bot.wait_ready(16)
        check(not fake.violations, "; ".join(fake.violations))
        return row(fake, ready_at_restart=ready_at_restart)
    finally:
        await bot.stop()
        await server.stop()
        await fake.stop()


async def stopped_mid_start(kind: str, how: int) -> dict:
    """The bot stopped after 8 READY: the process exits, nothing is left waiting at the
    server, and nothing is granted after."""
    fake = await start_fake(16)
    server = await Server(fake).start()
    bot = await Bot(kind, fake, server.url, 16, "0-15").start()
    try:
        await bot.wait_ready(8)
        exited_in = await bot.stop(how)
        check(bot.process.returncode == 0 and bot.stopped,
              f"{bot.name} ended with code {bot.process.returncode}, not cleanly: {bot.stderr[-1500:].decode()}")
        await asyncio.sleep(0.5)
        status = await server.status()
        identifies = len(fake.identifies)
        check(status["waiting_count"] == 0, f"{status['waiting_count']} left waiting at the server")
        await asyncio.sleep(2 * INTERVAL + MARGIN)
        later = await server.status()
        check(later["granted"] == status["granted"], f"granted after the stop: {status['granted']} -> {later['granted']}")
        check(later["granted"] == identifies == len(fake.identifies),
              f"granted {later['granted']} for {identifies} IDENTIFYs (then {len(fake.identifies)})")
        return row(fake, exited_in_s=round(exited_in, 2), waiting_after=status["waiting_count"],
                   granted=later["granted"], cancelled=later["cancelled"])
    finally:
        await server.stop()
        await fake.stop()


async def invalidated(kind: str) -> dict:
    """Shard 0 of a bot is invalidated after READY while another process's start-up
    waits in its bucket: its re-IDENTIFY goes through the queue as a reconnect, ahead
    of the start-up."""
    fake = await start_fake(36)
    server = await Server(fake).start()
    bot = await Bot(kind, fake, server.url, 36, "0-3").start()
    load = None
    try:
        await bot.wait_ready(4)
        load = await Bot("ws", fake, server.url, 36, "4-35", name="load").start()
        await load.wait_ready(4)  # bucket 0's start-up is under way: shards 8..32 wait
        await fake.invalidate([0])
        invalidated_at = time.monotonic()
        await bot.wait_ready(4)
        deadline = time.monotonic() + 30
        while not any(i.shard == 0 and i.at > invalidated_at for i in fake.identifies):
            check(time.monotonic() < deadline, "shard 0 never IDENTIFYed again")
            await asyncio.sleep(0.05)
        await load.wait_ready(32)
        bucket0 = [i for i in fake.identifies if i.shard % 4 == 0 and i.at > invalidated_at]
        position = [i.shard for i in bucket0].index(0)
        after = len(bucket0) - position - 1
        # One start-up grant may be on its way when the invalidation comes.
        check(position <= 1, f"shard 0 came after {position} start-up IDENTIFYs of its bucket")
        check(after >= 5, f"only {after} start-up IDENTIFYs of its bucket came after it")
        check(not fake.violations, "; ".join(fake.violations))
        reidentify_delay = next(i.at for i in bucket0 if i.shard == 0) - invalidated_at
        return row(fake, start_ups_before=position, start_ups_after=after,
                   reidentify_after_s=round(reidentify_delay, 3))
    finally:
        await bot.stop()
        if load is not None:
            await load.stop()
        await server.stop()
        await fake.stop()


async def through_a_network(kind: str) -> dict:
    """The bot reaches the server through a network of 100 ms round trip (50 ms each
    way, 10 ms of jitter), which stalls for 1 s and then cuts every connection
    mid-start-up: every shard READY, 0 violations; a grant lost in the cut is asked
    again under a new key, never used."""
    fake = await start_fake(16)
    server = await Server(fake).start()
    proxy = await FaultProxy(server.port, delay=0.05, jitter=0.01).start()
    bot = await Bot(kind, fake, proxy.url, 16, "0-15").start()
    try:
        await bot.wait_ready(5)
        proxy.stall(1.0)
        await asyncio.sleep(0.9)
        proxy.cut()
        await bot.wait_ready(16)
        status = await server.status()
        check(status["granted"] >= len(fake.identifies) == 16,
              f"granted {status['granted']}, IDENTIFYs {len(fake.identifies)}")
        return row(fake, granted=status["granted"], lost_in_the_cut=status["granted"] - len(fake.identifies))
    finally:
        await bot.stop()
        await proxy.stop()
        await server.stop()
        await fake.stop()


async def heartbeat(heartbeat_timeout: float) -> dict:
    """Four discord.py processes of 2 shards on one bucket (max_concurrency 1): the
    later waits pass a 2 s heartbeat_timeout (60 s at 1:30). Measured: grants wasted,
    the warning given; with the documented setting raised, nothing wasted."""
    fake = await start_fake(8, max_concurrency=1)
    server = await Server(fake).start()
    await server.wait_ready()
    env = {"HEARTBEAT_TIMEOUT": str(heartbeat_timeout)}
    bots = [await Bot("py", fake, server.url, 8, f"{2 * i}-{2 * i + 1}", env, name=f"py-{i}").start()
            for i in range(4)]
    try:
        await asyncio.gather(*(bot.wait_ready(2, timeout=120) for bot in bots))
        status = await server.status()
        warned = sum(b"heartbeat_timeout" in bot.stderr for bot in bots)
        wasted = status["granted"] - len(fake.identifies)
        best = optimum(8, 1)
        return row(fake, optimum_s=best, granted=status["granted"], wasted=wasted,
                   processes_warned=warned, sockets_closed=fake.closed_by_client)
    finally:
        for bot in bots:
            await bot.stop()
        await server.stop()
        await fake.stop()


async def heartbeat_default() -> dict:
    result = await heartbeat(2.0)
    check(result["processes_warned"] >= 1, "no process warned of heartbeat_timeout")
    return result


async def heartbeat_raised() -> dict:
    result = await heartbeat(30.0)
    check(result["wasted"] == 0, f"{result['wasted']} grants wasted")
    check(result["sockets_closed"] == 0, f"{result['sockets_closed']} sockets closed")
    check(result["processes_warned"] == 0, "a process warned with heartbeat_timeout raised")
    check(result["makespan_s"] <= result["optimum_s"] * MAKESPAN_SLACK, f"makespan {result['makespan_s']} s")
    return result


SCENARIOS: Dict[str, Callable[[], "asyncio.Future[dict]"]] = {
    "ws-16": lambda: sixteen("ws"),
    "ws-workers-16": lambda: sixteen("ws", {"WORKERS": "4"}),
    "djs-16": lambda: sixteen("djs"),
    "py-16": lambda: sixteen("py"),
    "both-libraries": both_libraries,
    "ws-unreachable-3s": lambda: unreachable_first("ws"),
    "ws-workers-unreachable-3s": lambda: unreachable_first("ws", {"WORKERS": "4"}),
    # The control: the few lines a user writes without the package, in the same
    # scenario. The judge must see violations here, or it could not see them above.
    "ws-unreachable-3s-naive-control": lambda: unreachable_first("ws", {"NAIVE": "1"}),
    "djs-unreachable-3s": lambda: unreachable_first("djs"),
    "py-unreachable-3s": lambda: unreachable_first("py"),
    "ws-server-restarted": lambda: server_restarted("ws"),
    "djs-server-restarted": lambda: server_restarted("djs"),
    "py-server-restarted": lambda: server_restarted("py"),
    "ws-destroy": lambda: stopped_mid_start("ws", signal.SIGTERM),
    "djs-destroy": lambda: stopped_mid_start("djs", signal.SIGTERM),
    "py-close": lambda: stopped_mid_start("py", signal.SIGTERM),
    "py-ctrl-c": lambda: stopped_mid_start("py", signal.SIGINT),
    "ws-invalidated": lambda: invalidated("ws"),
    "djs-invalidated": lambda: invalidated("djs"),
    "py-invalidated": lambda: invalidated("py"),
    "ws-through-a-network": lambda: through_a_network("ws"),
    "djs-through-a-network": lambda: through_a_network("djs"),
    "py-through-a-network": lambda: through_a_network("py"),
    "py-heartbeat-2s": heartbeat_default,
    "py-heartbeat-raised": heartbeat_raised,
}


async def main(names: List[str]) -> int:
    failed = 0
    for name in names or list(SCENARIOS):
        start = time.monotonic()
        try:
            result = await SCENARIOS[name]()
            if name.endswith("-control"):
                check(result["violations"] > 0, "the control broke no rule: the judge sees nothing")
            else:
                # Every scenario: no IDENTIFY broke a rule.
                check(result["violations"] == 0, f"{result['violations']} violations")
            verdict = "ok"
        except Exception as error:  # a failed scenario is reported, the others still run
            failed += 1
            result, verdict = {"error": f"{type(error).__name__}: {error}"}, "FAILED"
        print(f"{verdict:6} {name:31} {time.monotonic() - start:5.1f} s  {json.dumps(result)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
