"""A bot on discord.py's AutoShardedClient with identify-queue's mixin, the way its
README says. Env: FAKE, QUEUE (comma separated), QUEUE_TOKEN, SHARDS, SHARD_IDS (`a-b`),
HEARTBEAT_TIMEOUT (seconds). Prints a JSON line per shard READY. SIGTERM calls
close(); SIGINT is Ctrl-C (discord.py's run() handles it)."""

import asyncio
import json
import logging
import os
import signal
import sys

import discord
import yarl
from identify_queue.discord import IdentifyQueueMixin

fake = os.environ["FAKE"]
# Where this discord.py goes: the fake (two class attributes, discord.py 2.x).
discord.http.Route.BASE = f"{fake}/api/v10"
discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.replace("http", "ws", 1) + "/gateway")

shard_count = int(os.environ["SHARDS"])
first, last = map(int, os.environ.get("SHARD_IDS", f"0-{shard_count - 1}").split("-"))


class Bot(IdentifyQueueMixin, discord.AutoShardedClient):
    identify_queue_url = os.environ["QUEUE"].split(",")
    identify_queue_token = os.environ.get("QUEUE_TOKEN")

    async def setup_hook(self):
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, lambda: asyncio.ensure_future(self.close()))

    async def on_shard_ready(self, shard_id):
        print(json.dumps({"ready": shard_id}), flush=True)


logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
bot = Bot(
    intents=discord.Intents.none(),
    shard_count=shard_count,
    shard_ids=list(range(first, last + 1)),
    heartbeat_timeout=float(os.environ.get("HEARTBEAT_TIMEOUT", "60")),
)
bot.run("fake-token", log_handler=None)
print(json.dumps({"stopped": True}), flush=True)
