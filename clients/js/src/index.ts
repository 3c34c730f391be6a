/**
 * The client of `identify-queue-server` for @discordjs/ws and discord.js: an
 * `IIdentifyThrottler` that asks the server when each shard may IDENTIFY.
 *
 * ```js
 * const { identifyQueue } = require('identify-queue');
 * new WebSocketManager({ token, intents, rest, buildIdentifyThrottler: () => identifyQueue('http://queue:8000') });
 * new Client({ intents, ws: { buildIdentifyThrottler: () => identifyQueue('http://queue:8000') } });
 * ```
 *
 * Why it is more than a `fetch`: @discordjs/ws sends an IDENTIFY whenever
 * `waitForIdentify` rejects for any reason but its own abort (a server restarting, a
 * `401`, Node's 300 s headers timeout), unthrottled. This throttler therefore never
 * rejects unless its signal aborts: it asks again, with backoff, over its URLs, for
 * as long as it takes.
 *
 * It speaks the server's native API (`POST /v1/identify`): one idempotency key per
 * attempt, polled with a `wait_ms` of at most 20 s (below every client and proxy
 * timeout), so the shard keeps its place in the queue across retries and failovers.
 *
 * @packageDocumentation
 */

/** The shape @discordjs/ws and discord.js ask of `buildIdentifyThrottler`'s result. */
export interface IdentifyThrottler {
  /**
   * Resolves once shard `shardId` may IDENTIFY; rejects only once `signal` aborts.
   */
  waitForIdentify(shardId: number, signal?: AbortSignal): Promise<void>;
}

/** How bad a log line is. */
export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

/** Options of {@link identifyQueue}. */
export interface IdentifyQueueOptions {
  /** The server's `--auth-token`, sent as `Authorization: Bearer <token>`. */
  token?: string;
  /**
   * How long one poll may wait at the server, in ms (the native API's `wait_ms`).
   * 20 000 by default and at most (below Node's and proxies' idle timeouts), 1 000 at least.
   */
  waitMs?: number;
  /** The longest pause between two attempts after a failure, in ms (5 000 by default). */
  maxBackoffMs?: number;
  /**
   * Where log lines go; nothing is logged without it. The line's fields carry the
   * shard, the URL, the key, the status and the error where they apply.
   */
  log?: (level: LogLevel, message: string, fields: Record<string, unknown>) => void;
}

/** The pause after a failure starts here, and doubles to `maxBackoffMs`. */
const FIRST_BACKOFF_MS = 100;
/** A refusal that only an operator can mend (`400`, `401`, `404`) is asked again at most this far apart. */
const MAX_REFUSED_BACKOFF_MS = 30_000;
/** The server's own longest `wait_ms` is 25 s; the client keeps below Node's and proxies' limits. */
const MAX_WAIT_MS = 20_000;
/** Shorter polls would ask the server again and again for nothing. */
const MIN_WAIT_MS = 1_000;
/** A poll's answer is due by its `wait_ms`; past it by this much the request is given up as lost. */
const ANSWER_SLACK_MS = 10_000;
/** A cancel (`DELETE`) is fire and forget, bounded by this. */
const CANCEL_TIMEOUT_MS = 5_000;

/** Keys are `A-Z a-z 0-9 - . _ ~`; this process's prefix keeps them apart from other processes'. */
function processPrefix(): string {
  const random = Math.random().toString(36).slice(2, 10);
  return `${process.pid.toString(36)}.${Date.now().toString(36)}.${random}`;
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener('abort', done, { once: true });
  });
}

/** `Retry-After` in ms (seconds, or an HTTP date), or undefined. */
function retryAfterMs(value: string | null): number | undefined {
  if (value === null) return undefined;
  const seconds = Number(value);
  if (Number.isFinite(seconds) && seconds >= 0) return seconds * 1000;
  const date = Date.parse(value);
  return Number.isNaN(date) ? undefined : Math.max(0, date - Date.now());
}

function abortError(signal: AbortSignal): unknown {
  return signal.reason ?? new DOMException('This operation was aborted', 'AbortError');
}

/**
 * A queue on one or several `identify-queue-server`s (the servers of one Redis
 * namespace, or one server). Build one per process and share it: it remembers which
 * shards were granted before, and asks for their next IDENTIFYs as reconnects, which
 * the server serves before its bucket's start-up.
 */
export class IdentifyQueue implements IdentifyThrottler {
  readonly urls: readonly string[];
  private readonly token: string | undefined;
  private readonly waitMs: number;
  private readonly maxBackoffMs: number;
  private readonly log: IdentifyQueueOptions['log'];
  private readonly prefix = processPrefix();
  private attempts = 0;
  /** The URL the next attempt starts at: attempts spread over the list, and a failure moves on. */
  private nextUrl = 0;
  /** Shards granted at least once: their next IDENTIFY is a reconnect. */
  private readonly granted = new Set<number>();

  constructor(urls: string | readonly string[], options: IdentifyQueueOptions = {}) {
    const list = (typeof urls === 'string' ? [urls] : [...urls]).map((url) => url.replace(/\/+$/, ''));
    if (list.length === 0) throw new TypeError('identifyQueue: `urls` is empty: give at least one server URL');
    for (const url of list) {
      let parsed: URL;
      try {
        parsed = new URL(url);
      } catch {
        throw new TypeError(`identifyQueue: \`urls\`: ${JSON.stringify(url)} is not a URL`);
      }
      if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
        throw new TypeError(`identifyQueue: \`urls\`: ${JSON.stringify(url)} is not http:// or https://`);
      }
    }
    const waitMs = options.waitMs ?? MAX_WAIT_MS;
    if (!Number.isInteger(waitMs) || waitMs < MIN_WAIT_MS || waitMs > MAX_WAIT_MS) {
      throw new RangeError(`identifyQueue: \`waitMs\` is a whole number of ms from ${MIN_WAIT_MS} to ${MAX_WAIT_MS}, got ${waitMs}`);
    }
    const maxBackoffMs = options.maxBackoffMs ?? 5_000;
    if (!Number.isFinite(maxBackoffMs) || maxBackoffMs < FIRST_BACKOFF_MS) {
      throw new RangeError(`identifyQueue: \`maxBackoffMs\` is at least ${FIRST_BACKOFF_MS}, got ${maxBackoffMs}`);
    }
    if (options.token !== undefined && (options.token === '' || /[\s\x00-\x1f\x7f]/.test(options.token))) {
      throw new TypeError('identifyQueue: `token` is empty or holds a space or control character');
    }
    this.urls = list;
    this.token = options.token;
    this.waitMs = waitMs;
    this.maxBackoffMs = maxBackoffMs;
    this.log = options.log;
  }

  /**
   * Resolves once shard `shardId` may IDENTIFY. Never rejects unless `signal` aborts:
   * a server out of reach, restarting or refusing is asked again with backoff. On
   * abort the server is told to drop the request (`DELETE`), and the promise rejects
   * with the signal's reason.
   */
  async waitForIdentify(shardId: number, signal?: AbortSignal): Promise<void> {
    if (!Number.isInteger(shardId) || shardId < 0 || shardId > 0xffff_ffff) {
      // A bug in the caller; waiting for ever would hide it, and an IDENTIFY would
      // follow a rejection: the error names it, and the wait never ends.
      this.emit('error', 'shardId is not a whole number in 0..2^32: it can never be granted', { shard: shardId });
      await new Promise<void>((_, reject) => {
        if (signal?.aborted) return reject(abortError(signal));
        signal?.addEventListener('abort', () => reject(abortError(signal)), { once: true });
      });
      return;
    }
    const priority = this.granted.has(shardId) ? 'reconnect' : 'start';
    let key = this.newKey(shardId);
    let index = this.nextUrl++ % this.urls.length;
    let backoff = FIRST_BACKOFF_MS;
    /** The URL a key was last polled at: where a cancel goes. */
    let polledAt: string | undefined;
    // Each turn is one poll; `pause` is the wait before the next (0: at once).
    for (;;) {
      if (signal?.aborted) {
        this.cancel(key, polledAt, shardId);
        throw abortError(signal);
      }
      const url = this.urls[index];
      let pause = 0;
      let moveOn = false;
      const fields: Record<string, unknown> = { shard: shardId, url, key };
      try {
        polledAt = url;
        const response = await this.poll(url, shardId, key, priority, signal);
        const status = response.status;
        const body = await response.json().catch(() => undefined as unknown);
        const answer = (typeof body === 'object' && body !== null ? body : {}) as Record<string, unknown>;
        fields.status = status;
        if (status === 200 && answer.granted === true) {
          this.granted.add(shardId);
          this.emit('debug', 'granted', { ...fields, waited_ms: answer.waited_ms });
          return;
        } else if (status === 202) {
          backoff = FIRST_BACKOFF_MS;
          if (answer.held_by_another_server === true) {
            // Its place is kept at the server that holds the key: the next poll may reach it.
            moveOn = true;
          } else if (answer.ready === false) {
            this.emit('info', 'the server has no limit yet; still waiting', { ...fields, reason: answer.reason });
          } else {
            this.emit('debug', 'waiting', { ...fields, place: answer.place, eta_ms: answer.eta_ms });
          }
        } else if (status === 410) {
          // Granted, but the answer was lost on the way (a cut connection): that grant
          // is spent and its instant passed. IDENTIFYing now could come too close to its
          // bucket's next grant, so the shard asks again with a new key.
          this.emit('warn', 'a grant was lost on the way; asking again with a new key', fields);
          key = this.newKey(shardId);
        } else if (status === 409) {
          // The shard waits under another key: an earlier attempt's (its cancel was
          // lost) or another process's. The other key lapses within its lease.
          this.emit('warn', 'the shard waits at the server under another key; asking again', { ...fields, error: answer.error });
          pause = this.grow(backoff);
          backoff = pause;
        } else if (status === 429 || status === 503) {
          const after = retryAfterMs(response.headers.get('retry-after'));
          this.emit('warn', 'the server asked to come back later', { ...fields, error: answer.error, retry_after_ms: after });
          pause = Math.max(after ?? 0, backoff);
          backoff = this.grow(backoff);
          moveOn = status === 503;
        } else if (status >= 500) {
          this.emit('warn', 'the server failed; asking again', { ...fields, error: answer.error });
          pause = backoff;
          backoff = this.grow(backoff);
          moveOn = true;
        } else {
          // 400, 401, 403, 404 (a server without the native API), ...: an operator has
          // to act. Rejecting would make the library IDENTIFY unthrottled, so it asks
          // again, slowly, and says so loudly.
          const hint = status === 401 || status === 403 ? ' (check the `token` option against the server\'s --auth-token)' : '';
          this.emit('error', `the server refused the request${hint}; asking again`, { ...fields, error: answer.error });
          pause = backoff;
          backoff = Math.min(backoff * 2, MAX_REFUSED_BACKOFF_MS);
          moveOn = true;
        }
      } catch (error) {
        if (signal?.aborted) {
          this.cancel(key, polledAt, shardId);
          throw abortError(signal);
        }
        this.emit('warn', 'the server is out of reach; asking again', { ...fields, error: String(error) });
        pause = backoff;
        backoff = this.grow(backoff);
        moveOn = true;
      }
      if (moveOn) index = (index + 1) % this.urls.length;
      if (pause > 0) await sleep(pause, signal);
    }
  }

  private grow(backoff: number): number {
    return Math.min(backoff * 2, this.maxBackoffMs);
  }

  private newKey(shardId: number): string {
    this.attempts += 1;
    return `${this.prefix}.${shardId}.${this.attempts}`;
  }

  /** One poll, bounded by its wait and the slack: a request past that is lost. */
  private async poll(url: string, shard: number, key: string, priority: string, signal?: AbortSignal): Promise<Response> {
    const query = `shard=${shard}&key=${key}&priority=${priority}&wait_ms=${this.waitMs}`;
    const controller = new AbortController();
    const onAbort = () => controller.abort(signal?.reason);
    signal?.addEventListener('abort', onAbort, { once: true });
    const timer = setTimeout(() => controller.abort(new Error('no answer within wait_ms and 10 s')), this.waitMs + ANSWER_SLACK_MS);
    try {
      return await fetch(`${url}/v1/identify?${query}`, {
        method: 'POST',
        headers: this.headers(),
        signal: controller.signal,
      });
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
    }
  }

  /** Tells the server to drop `key` (fire and forget: a key nobody polls lapses within seconds anyway). */
  private cancel(key: string, url: string | undefined, shard: number): void {
    if (url === undefined) return;
    fetch(`${url}/v1/identify/${key}`, {
      method: 'DELETE',
      headers: this.headers(),
      signal: AbortSignal.timeout(CANCEL_TIMEOUT_MS),
    }).then(
      (response) => {
        void response.arrayBuffer().catch(() => undefined);
        this.emit('debug', 'cancelled', { shard, url, key, status: response.status });
      },
      (error) => this.emit('debug', 'the cancel did not reach the server; the key lapses on its own', { shard, url, key, error: String(error) }),
    );
  }

  private headers(): Record<string, string> {
    return this.token === undefined ? {} : { authorization: `Bearer ${this.token}` };
  }

  private emit(level: LogLevel, message: string, fields: Record<string, unknown>): void {
    if (this.log === undefined) return;
    try {
      this.log(level, `identify-queue: ${message}`, fields);
    } catch {
      // A throwing logger must not make the throttler reject.
    }
  }
}

/**
 * A throttler on the servers at `urls`, for `buildIdentifyThrottler`:
 *
 * ```js
 * buildIdentifyThrottler: () => identifyQueue('http://queue:8000', { token: process.env.QUEUE_TOKEN })
 * ```
 *
 * Throws a `TypeError` or `RangeError` naming the option at fault for a bad URL or
 * option; after that it never throws.
 */
export function identifyQueue(urls: string | readonly string[], options?: IdentifyQueueOptions): IdentifyQueue {
  return new IdentifyQueue(urls, options);
}
