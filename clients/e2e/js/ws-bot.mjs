// A bot on @discordjs/ws's WebSocketManager with identify-queue as its throttler, the
// way its README says. Env: FAKE (the fake Discord's URL), QUEUE (server URLs, comma
// separated), QUEUE_TOKEN (the server's --auth-token, if any), SHARDS (the shard
// count), SHARD_IDS (`a-b`, all by default), WORKERS (`4`: WorkerShardingStrategy, 4
// shards per worker thread; the throttler stays in the main thread), NAIVE (`1`: the
// few lines of fetch a user would write instead of the package, which reject when the
// server is out of reach: the control that shows the judge catches what the package
// prevents). Prints a JSON line per READY; SIGTERM runs manager.destroy(), and the
// process ends on its own.
import { REST } from '@discordjs/rest';
import { WebSocketManager, WebSocketShardEvents, WorkerShardingStrategy } from '@discordjs/ws';
import { identifyQueue } from 'identify-queue';

const shardCount = Number(process.env.SHARDS);
const [first, last] = (process.env.SHARD_IDS ?? `0-${shardCount - 1}`).split('-').map(Number);
const rest = new REST({ api: `${process.env.FAKE}/api`, version: '10' }).setToken('fake-token');
const log = (level, message, fields) => {
  if (level !== 'debug') console.error(JSON.stringify({ level, message, ...fields }));
};
const naive = {
  async waitForIdentify(shardId, signal) {
    const res = await fetch(`${process.env.QUEUE}/?shard=${shardId}`, { signal });
    await res.arrayBuffer();
    if (!res.ok) throw new Error(`identify queue answered ${res.status}`);
  },
};
const manager = new WebSocketManager({
  token: 'fake-token',
  intents: 0,
  rest,
  shardCount,
  shardIds: { start: first, end: last },
  buildIdentifyThrottler: () => (process.env.NAIVE ? naive : identifyQueue(process.env.QUEUE.split(','), { log, token: process.env.QUEUE_TOKEN })),
  ...(process.env.WORKERS
    ? { buildStrategy: (manager) => new WorkerShardingStrategy(manager, { shardsPerWorker: Number(process.env.WORKERS) }) }
    : {}),
});
manager.on(WebSocketShardEvents.Ready, (_data, shardId) => console.log(JSON.stringify({ ready: shardId })));
process.on('SIGTERM', async () => {
  await manager.destroy();
  // No process.exit(): the process ends once nothing is pending, the throttler's
  // cancels (DELETE) of the aborted waits included.
  console.log(JSON.stringify({ stopped: true }));
});
// Not awaited at the top level: a start-up stopped midway never settles it.
manager.connect().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
