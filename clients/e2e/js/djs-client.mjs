// A bot on discord.js's Client with identify-queue as its throttler (`ws:
// { buildIdentifyThrottler }`), the way its README says. Env as ws-bot.mjs.
// Prints a JSON line per shard READY; SIGTERM runs client.destroy(), and the process ends on its own.
import { Client, Events } from 'discord.js';
import { identifyQueue } from 'identify-queue';

const shardCount = Number(process.env.SHARDS);
const [first, last] = (process.env.SHARD_IDS ?? `0-${shardCount - 1}`).split('-').map(Number);
const shards = Array.from({ length: last - first + 1 }, (_, i) => first + i);
const log = (level, message, fields) => {
  if (level !== 'debug') console.error(JSON.stringify({ level, message, ...fields }));
};
const client = new Client({
  intents: [],
  shards,
  shardCount,
  rest: { api: `${process.env.FAKE}/api` },
  ws: { buildIdentifyThrottler: () => identifyQueue(process.env.QUEUE.split(','), { log, token: process.env.QUEUE_TOKEN }) },
});
client.on(Events.ShardReady, (shardId) => console.log(JSON.stringify({ ready: shardId })));
process.on('SIGTERM', async () => {
  await client.destroy();
  // No process.exit(): the process ends once nothing is pending, the throttler's
  // cancels (DELETE) of the aborted waits included.
  console.log(JSON.stringify({ stopped: true }));
});
// Not awaited at the top level: a start-up stopped midway never settles it.
client.login('fake-token').catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
