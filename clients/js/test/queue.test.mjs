// The client's own logic (retries, keys, aborts, priorities, options) against a scripted
// HTTP server on loopback: each test scripts the answers and asserts what the client
// sent. The real server and the real libraries are met in clients/e2e.
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { createRequire } from 'node:module';
import { test } from 'node:test';

import { IdentifyQueue, identifyQueue } from '../dist/esm/index.js';

/** A server that answers each request with `script(request, index)`: [status, body, headers]. */
async function scripted(script) {
  const seen = [];
  const server = createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    const entry = {
      method: req.method,
      path: url.pathname,
      query: Object.fromEntries(url.searchParams),
      auth: req.headers.authorization,
    };
    seen.push(entry);
    const answer = script(entry, seen.length - 1);
    if (answer === 'cut') return req.socket.destroy();
    if (answer === 'hang') return;
    const [status, body = {}, headers = {}] = answer;
    res.writeHead(status, { 'content-type': 'application/json', ...headers });
    res.end(JSON.stringify(body));
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${server.address().port}`;
  const close = () => {
    server.closeAllConnections();
    return new Promise((resolve) => server.close(resolve));
  };
  return { url, seen, close };
}

const granted = (q) => [200, { granted: true, shard: Number(q.shard), key: q.key, granted_at: Date.now(), waited_ms: 0 }];
const waiting = [202, { granted: false, place: 1, eta_ms: 1000 }];

test('a 202 is polled again under the same key, and the 200 resolves', async () => {
  const server = await scripted((r, i) => (i < 2 ? waiting : granted(r.query)));
  await identifyQueue(server.url).waitForIdentify(3, new AbortController().signal);
  assert.equal(server.seen.length, 3);
  const keys = new Set(server.seen.map((r) => r.query.key));
  assert.equal(keys.size, 1, 'one key across the polls: the place is kept');
  for (const r of server.seen) {
    assert.equal(r.method, 'POST');
    assert.equal(r.path, '/v1/identify');
    assert.equal(r.query.shard, '3');
    assert.equal(r.query.priority, 'start');
    assert.equal(r.query.wait_ms, '20000');
    assert.match(r.query.key, /^[A-Za-z0-9._~-]{1,128}$/);
  }
  await server.close();
});

test('a shard granted before asks as a reconnect, under a new key', async () => {
  const server = await scripted((r) => granted(r.query));
  const queue = identifyQueue(server.url);
  await queue.waitForIdentify(1);
  await queue.waitForIdentify(2);
  await queue.waitForIdentify(1);
  assert.deepEqual(server.seen.map((r) => r.query.priority), ['start', 'start', 'reconnect']);
  assert.equal(new Set(server.seen.map((r) => r.query.key)).size, 3, 'a key per attempt');
  await server.close();
});

test('a 410 (a grant whose answer was lost) asks again with a new key, never IDENTIFYs on it', async () => {
  const server = await scripted((r, i) => (i === 0 ? [410, { error: 'answered', granted_at: 1 }] : granted(r.query)));
  await identifyQueue(server.url).waitForIdentify(0);
  assert.equal(server.seen.length, 2);
  assert.notEqual(server.seen[0].query.key, server.seen[1].query.key);
  await server.close();
});

test('it never rejects on failures: cut connections, 500s, 401s, 404s, 409s, then a grant', async () => {
  const answers = ['cut', [500, {}], [401, { error: 'token' }], [404, {}], [409, { error: 'other key' }], [400, {}]];
  const server = await scripted((r, i) => answers[i] ?? granted(r.query));
  const lines = [];
  const queue = identifyQueue(server.url, { token: 'secret', log: (level, message) => lines.push([level, message]) });
  const start = Date.now();
  await queue.waitForIdentify(5);
  assert.equal(server.seen.length, answers.length + 1);
  assert.ok(server.seen.every((r) => r.auth === 'Bearer secret'));
  assert.equal(new Set(server.seen.map((r) => r.query.key)).size, 1, 'the key is kept through failures');
  // Backoff 100, 200, 400, 800, 1600, 3200 ms (401/404/400 double too): at least 6.3 s in all.
  assert.ok(Date.now() - start >= 6_000, `backed off: ${Date.now() - start} ms`);
  assert.ok(lines.some(([level, message]) => level === 'error' && /token/.test(message)), 'a 401 says to check the token');
  await server.close();
});

test('a Retry-After is honoured', async () => {
  const server = await scripted((r, i) => (i === 0 ? [429, { error: 'full' }, { 'retry-after': '1' }] : granted(r.query)));
  const start = Date.now();
  await identifyQueue(server.url).waitForIdentify(0);
  assert.ok(Date.now() - start >= 990, `waited ${Date.now() - start} ms`);
  await server.close();
});

test('a server out of reach is asked again until it comes up; other URLs are tried meanwhile', async () => {
  const down = await scripted(() => [200, {}]);
  const downUrl = down.url;
  await down.close(); // nothing listens there now
  const up = await scripted((r) => granted(r.query));
  const queue = identifyQueue([downUrl, up.url]);
  await queue.waitForIdentify(7);
  await queue.waitForIdentify(8);
  assert.equal(up.seen.length, 2);
  await up.close();
});

test('a key held by another server moves the next poll to the next URL, same key', async () => {
  const a = await scripted(() => [202, { granted: false, held_by_another_server: true }]);
  const b = await scripted((r) => granted(r.query));
  await identifyQueue([a.url, b.url]).waitForIdentify(2);
  assert.equal(a.seen.length, 1);
  assert.equal(b.seen[0].query.key, a.seen[0].query.key);
  await Promise.all([a.close(), b.close()]);
});

test('an abort rejects with the signal reason and cancels the key at the server', async () => {
  const server = await scripted((r) => (r.method === 'DELETE' ? [204] : 'hang'));
  const controller = new AbortController();
  const waited = identifyQueue(server.url).waitForIdentify(4, controller.signal);
  await new Promise((resolve) => setTimeout(resolve, 100));
  const reason = new Error('shard closed');
  controller.abort(reason);
  await assert.rejects(waited, (error) => error === reason);
  for (let i = 0; i < 50 && server.seen.length < 2; i++) await new Promise((resolve) => setTimeout(resolve, 20));
  assert.equal(server.seen.length, 2);
  assert.equal(server.seen[1].method, 'DELETE');
  assert.equal(server.seen[1].path, `/v1/identify/${server.seen[0].query.key}`);
  await server.close();
});

test('an abort during a backoff rejects at once', async () => {
  const server = await scripted(() => [500, {}]);
  const controller = new AbortController();
  const waited = identifyQueue(server.url, { maxBackoffMs: 60_000 }).waitForIdentify(4, controller.signal);
  await new Promise((resolve) => setTimeout(resolve, 400));
  const start = Date.now();
  controller.abort();
  await assert.rejects(waited, { name: 'AbortError' });
  assert.ok(Date.now() - start < 1000);
  await server.close();
});

test('an aborted signal rejects without asking', async () => {
  const server = await scripted((r) => granted(r.query));
  const controller = new AbortController();
  controller.abort();
  await assert.rejects(identifyQueue(server.url).waitForIdentify(0, controller.signal));
  assert.equal(server.seen.length, 0);
  await server.close();
});

test('a throwing logger does not make it reject', async () => {
  const server = await scripted((r, i) => (i === 0 ? [500, {}] : granted(r.query)));
  const log = () => {
    throw new Error('logger broke');
  };
  await identifyQueue(server.url, { log }).waitForIdentify(0);
  await server.close();
});

test('bad options throw, naming the option', () => {
  assert.throws(() => identifyQueue([]), /`urls` is empty/);
  assert.throws(() => identifyQueue('queue:8000'), /not http/);
  assert.throws(() => identifyQueue('not a url'), /not a URL/);
  assert.throws(() => identifyQueue('http://q', { waitMs: 25_000 }), /`waitMs`/);
  assert.throws(() => identifyQueue('http://q', { waitMs: 1.5 }), /`waitMs`/);
  assert.throws(() => identifyQueue('http://q', { waitMs: 0 }), /`waitMs`/);
  assert.throws(() => identifyQueue('http://q', { maxBackoffMs: 0 }), /`maxBackoffMs`/);
  assert.throws(() => identifyQueue('http://q', { token: 'a b' }), /`token`/);
  assert.ok(identifyQueue('http://q/') instanceof IdentifyQueue);
  assert.deepEqual(identifyQueue('http://q/').urls, ['http://q']);
});

test('a shard id no server can serve never resolves, and still rejects on abort', async () => {
  const controller = new AbortController();
  const waited = identifyQueue('http://127.0.0.1:9').waitForIdentify(-1, controller.signal);
  const raced = await Promise.race([waited.then(() => 'resolved'), new Promise((r) => setTimeout(() => r('pending'), 200))]);
  assert.equal(raced, 'pending');
  controller.abort();
  await assert.rejects(waited);
});

test('the CommonJS build loads with require', () => {
  const require = createRequire(import.meta.url);
  const cjs = require('../dist/cjs/index.js');
  assert.equal(typeof cjs.identifyQueue, 'function');
  assert.equal(typeof cjs.IdentifyQueue, 'function');
});
