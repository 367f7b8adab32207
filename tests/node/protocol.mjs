// End-to-end test of rtcio-signal driven by the real npm `socket.io-client`, talking to the
// server exactly as browser rtc.io clients do (see PROTOCOL.md).
//
//   node --test tests/node/          (finds it through protocol.test.mjs)
//   node --test tests/node/protocol.mjs
//
// Against a running server: SERVER_URL=http://127.0.0.1:PORT JWT_SECRET=... node --test tests/node/
// Without SERVER_URL the test starts `target/debug/rtcio-signal` itself (override the path with
// RTCIO_SIGNAL_BIN), building it with cargo first if the binary is missing.
//
// "Receives nothing" is never checked with a sleep. Events from the server reach one client in
// the order the server emitted them, so after the action under test has been answered (or a
// later event of the same sender has been answered, since the server handles one socket's
// events in order), a third party sends the receiver a legitimate event; if that is the first
// thing the receiver gets, nothing came before it.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { isDeepStrictEqual } from 'node:util';
import { existsSync } from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { inspect } from 'node:util';

import jwt from 'jsonwebtoken';
import { io } from 'socket.io-client';

const WAIT_MS = 5000;
const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

let serverUrl = process.env.SERVER_URL;
let secret = process.env.JWT_SECRET;
let server = null; // the child process, when this file started the server
const serverLog = []; // its last stderr lines, shown when it fails to start

// ---------------------------------------------------------------- server

function startServer() {
  const bin = process.env.RTCIO_SIGNAL_BIN || path.join(REPO, 'target', 'debug', 'rtcio-signal');
  if (!existsSync(bin)) {
    // Cargo's output goes to stderr so it cannot disturb the test runner's report.
    const built = spawnSync('cargo', ['build', '-p', 'rtcio-signal'], {
      cwd: REPO,
      stdio: ['ignore', 2, 2],
    });
    if (built.status !== 0 || !existsSync(bin)) {
      throw new Error(`cargo build -p rtcio-signal failed (status ${built.status}); no ${bin}`);
    }
  }
  secret = randomBytes(24).toString('base64url').slice(0, 32);
  const env = { ...process.env, JWT_SECRET: secret };
  // Settings from the caller's environment must not change what this test expects.
  for (const key of [
    'HOST', 'PORT', 'DEV_MODE', 'REDIS_URL', 'JWT_PUBLIC_KEY_FILE', 'JWT_ISSUER', 'JWT_AUDIENCE',
    'MAX_PAYLOAD_BYTES', 'MAX_PEERS_PER_ROOM', 'DEMO_DIR', 'ALLOWED_ORIGINS',
    'WRONG_PASSWORDS_PER_SOCKET', 'WRONG_PASSWORDS_PER_USER', 'WRONG_PASSWORDS_PER_ROOM', 'WRONG_PASSWORD_WINDOW_MS',
    'RECOVERY_WINDOW_MS',
  ]) {
    delete env[key];
  }
  const child = spawn(bin, ['--host', '127.0.0.1', '--port', '0'], {
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  server = child;
  readline.createInterface({ input: child.stderr }).on('line', (line) => {
    serverLog.push(line);
    if (serverLog.length > 50) serverLog.shift();
  });
  return new Promise((resolve, reject) => {
    const fail = (why) => {
      clearTimeout(timer);
      reject(new Error(`${why}\n--- server stderr (last lines) ---\n${serverLog.join('\n')}`));
    };
    const timer = setTimeout(() => fail(`${bin} did not print its listening line within 20 s`), 20_000);
    child.once('error', (e) => fail(`cannot start ${bin}: ${e.message}`));
    child.once('exit', (code, signal) => fail(`${bin} exited early (code ${code}, signal ${signal})`));
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      const m = /^rtcio-signal listening on (http:\/\/\S+)$/.exec(line.trim());
      if (m) {
        clearTimeout(timer);
        child.removeAllListeners('exit');
        resolve(m[1]);
      }
    });
  });
}

async function stopServer() {
  if (!server || server.exitCode !== null || server.signalCode !== null) return;
  const exited = new Promise((resolve) => server.once('exit', resolve));
  server.kill('SIGTERM');
  const timer = setTimeout(() => server.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(timer);
}

before(async () => {
  if (serverUrl) {
    assert.ok(secret, 'SERVER_URL is set, so JWT_SECRET must be set to the secret the server uses');
  } else {
    serverUrl = await startServer();
  }
});

after(stopServer);

// ---------------------------------------------------------------- tokens

const nowSeconds = () => Math.floor(Date.now() / 1000);

function token({ sub, name, rooms, exp = nowSeconds() + 600, key = secret } = {}) {
  const claims = { sub, exp };
  if (name !== undefined) claims.name = name;
  if (rooms !== undefined) claims.rooms = rooms;
  return jwt.sign(claims, key, { algorithm: 'HS256', noTimestamp: true });
}

function unsignedToken(claims) {
  const part = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  return `${part({ alg: 'none', typ: 'JWT' })}.${part(claims)}.`;
}

// ---------------------------------------------------------------- clients

const show = (v) => inspect(v, { depth: 6, breakLength: Infinity, maxStringLength: 120 });
const uniqueRoom = (tag) => `${tag}-${randomBytes(4).toString('hex')}`;

/** One socket.io-client socket with an inbox of everything the server sent it, in order. */
class Peer {
  constructor(label, socket) {
    this.label = label;
    this.socket = socket;
    this.id = undefined; // set on connect; kept after disconnect
    this.inbox = [];
    this.log = [];
    this.waiter = null;
    socket.onAny((event, ...args) => {
      const message = { event, payload: args[0], extra: args.slice(1) };
      this.log.push(message);
      if (this.waiter) {
        const { resolve } = this.waiter;
        this.waiter = null;
        resolve(message);
      } else {
        this.inbox.push(message);
      }
    });
  }

  emit(event, ...args) {
    this.socket.emit(event, ...args);
  }

  /** The next event from the server, whatever it is. */
  next(what) {
    if (this.inbox.length > 0) return Promise.resolve(this.inbox.shift());
    assert.equal(this.waiter, null, `${this.label}: two concurrent waits`);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = null;
        reject(new Error(`${this.label} (${this.id}): timed out after ${WAIT_MS} ms waiting for ${what}; ` +
          `everything received so far: ${show(this.log.map((m) => [m.event, m.payload]))}`));
      }, WAIT_MS);
      this.waiter = {
        resolve: (message) => {
          clearTimeout(timer);
          resolve(message);
        },
      };
    });
  }

  /** Asserts the next event is `event`; returns its payload. */
  async expect(event, what = event) {
    const m = await this.next(`${event} (${what})`);
    assert.equal(m.event, event,
      `${this.label}: expected ${event} (${what}) next, got ${m.event} ${show(m.payload)}`);
    assert.equal(m.extra.length, 0, `${this.label}: ${event} carried extra arguments ${show(m.extra)}`);
    return m.payload;
  }

  /** Asserts the next event is `event` with exactly `payload`. */
  async expectExactly(event, payload, what = event) {
    const got = await this.expect(event, what);
    assert.deepEqual(got, payload, `${this.label}: ${event} (${what}) payload`);
    return got;
  }

  /** Asserts the next event is the server's `error` reply for `event` with `code`. */
  async expectError(event, code, what = `${event} -> ${code}`) {
    const got = await this.expect('error', what);
    assert.equal(got?.code, code, `${this.label}: error code for ${what}: ${show(got)}`);
    assert.equal(got.event, event, `${this.label}: error.event for ${what}: ${show(got)}`);
    assert.equal(typeof got.message, 'string', `${this.label}: error.message for ${what}: ${show(got)}`);
    assert.ok(got.message.length > 0, `${this.label}: empty error.message for ${what}`);
    return got;
  }

  /**
   * Asserts the next event is `join-error` with `reason` (any non-empty reason if null) and
   * `roomId` (unless undefined).
   */
  async expectJoinError(reason, roomId, what = `join-error ${reason}`) {
    const got = await this.expect('join-error', what);
    if (reason === null) {
      assert.equal(typeof got?.reason, 'string', `${this.label}: join-error reason for ${what}: ${show(got)}`);
      assert.ok(got.reason.length > 0, `${this.label}: empty join-error reason for ${what}`);
    } else {
      assert.equal(got?.reason, reason, `${this.label}: join-error reason for ${what}: ${show(got)}`);
    }
    assert.ok('roomId' in got, `${this.label}: join-error without roomId for ${what}: ${show(got)}`);
    if (roomId !== undefined) {
      assert.equal(got.roomId, roomId, `${this.label}: join-error roomId for ${what}`);
    }
    return got;
  }

  /** Asserts the next event is a relayed `#rtcio:message` from `from` carrying `data`. */
  async expectRelay(from, data, what = 'relayed #rtcio:message') {
    const got = await this.expect('#rtcio:message', `${what} from ${from.label}`);
    assert.equal(got.source, from.id, `${this.label}: ${what}: source must be the sender's socket id`);
    assert.deepEqual(got.data, data, `${this.label}: ${what}: data`);
    if ('target' in got) assert.equal(got.target, this.id, `${this.label}: ${what}: target`);
    return got;
  }

  relayTo(to, data, source = this.id) {
    this.emit('#rtcio:message', { source, target: to.id, data });
  }

  /** Fails if anything arrived that no assertion consumed. */
  assertDrained(when) {
    assert.deepEqual(this.inbox.map((m) => [m.event, m.payload]), [],
      `${this.label}: unexpected events ${when}`);
  }
}

/**
 * Per-test client factory. Every client it made is disconnected when the test ends, and the
 * contract invariant "nobody ever receives an event about themselves" is checked over
 * everything each one received.
 */
function clients(t, transports) {
  const made = [];
  const secrets = []; // every room password handed out by password() in this test
  const base = { forceNew: true, reconnection: false, timeout: WAIT_MS };
  if (transports) base.transports = transports;

  t.after(() => {
    for (const peer of made) peer.socket.disconnect();
    for (const peer of made) {
      // A room password never reaches any client, in any event.
      for (const m of peer.log) {
        const text = JSON.stringify([m.event, m.payload, ...m.extra]);
        for (const secret of secrets) {
          assert.ok(!text.includes(secret), `${peer.label} received a room password in ${m.event}: ${show(m.payload)}`);
        }
      }
      if (!peer.id) continue;
      for (const m of peer.log) {
        const p = m.payload;
        // `session` is the one event about the client itself: its own session.
        if (p && typeof p === 'object' && m.event !== 'session') {
          assert.notEqual(p.id, peer.id, `${peer.label} received ${m.event} about itself: ${show(p)}`);
          assert.notEqual(p.source, peer.id, `${peer.label} received ${m.event} from itself: ${show(p)}`);
        }
      }
    }
  });

  const open = (label, options) => {
    const peer = new Peer(label, io(serverUrl, { ...base, ...options }));
    made.push(peer);
    return peer;
  };

  /** Whichever comes first for `peer`: `{ connected: true }` or `{ error }` (connect_error). */
  const firstOutcome = (peer) => new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`${peer.label}: neither connect nor connect_error within ${WAIT_MS} ms`)),
      WAIT_MS);
    peer.socket.once('connect', () => {
      clearTimeout(timer);
      resolve({ connected: true });
    });
    peer.socket.once('connect_error', (error) => {
      clearTimeout(timer);
      resolve({ error });
    });
  });

  return {
    /**
     * A fresh, distinctive room password. At the end of the test no client may have received
     * it (nor any other password this returned) in any event.
     */
    password() {
      const secret = `pw-${randomBytes(8).toString('hex')}`;
      secrets.push(secret);
      return secret;
    },

    /** A connected client for user `sub` (token claims `name`/`rooms` optional). */
    async connect(label, claims = {}) {
      const peer = open(label, { auth: { token: token({ sub: `user-${label}`, ...claims }) } });
      const { error } = await firstOutcome(peer);
      if (error) throw new Error(`${label}: connect_error ${error.message}`);
      // Every connection starts with `session { id, resume, recovered }`; a fresh session's
      // peer id is its socket's id.
      const greeting = await peer.expect('session', 'the session greeting');
      assert.equal(greeting.id, peer.socket.id, `${label}: a fresh session's id is its socket id`);
      assert.equal(greeting.recovered, false, `${label}: a first connection is not recovered`);
      assert.ok(typeof greeting.resume === 'string' && greeting.resume.length >= 32,
        `${label}: session.resume must be a credential of at least 128 bits: ${show(greeting)}`);
      peer.session = greeting;
      peer.id = greeting.id;
      return peer;
    },

    /** The `connect_error` a connection attempt with these options gets. */
    async refusal(label, options) {
      const peer = open(label, options);
      try {
        const { error } = await firstOutcome(peer);
        if (!error) throw new Error(`${label}: connected, but the server should have refused it`);
        return error;
      } finally {
        peer.socket.disconnect();
      }
    },
  };
}

const userConnected = (peer, name) => ({ id: peer.id, name, userId: `user-${peer.label}` });

/** `peer` joins an empty (or new) room: its only reply is `join-ok`. */
const joinEmpty = (peer, roomId, name = peer.label, password = undefined) =>
  joinRoom(peer, roomId, [], name, password);

/**
 * `peer` joins `roomId` whose members are `members` (each `[peer, name]`, in joining order,
 * without cached media state); checks the whole exchange on every side. `password` is sent
 * only when given.
 */
async function joinRoom(peer, roomId, members, name = peer.label, password = undefined) {
  peer.emit('join-room', password === undefined ? { roomId, name } : { roomId, name, password });
  for (const [member, memberName] of members) {
    await peer.expectExactly('user-connected', userConnected(member, memberName),
      `${peer.label} learns of ${member.label} in ${roomId}`);
  }
  await peer.expectExactly('join-ok', { roomId }, `${peer.label} joins ${roomId}`);
  for (const [member] of members) {
    await member.expectExactly('user-connected', userConnected(peer, name),
      `${member.label} learns of ${peer.label} in ${roomId}`);
    await member.expectExactly('#rtcio:init-offer', { source: peer.id },
      `${member.label} is asked to offer to ${peer.label}`);
  }
}

/** Connects `labels` and joins them, in that order and under those names, to a new room. */
async function roomWith(c, tag, labels) {
  const room = uniqueRoom(tag);
  const peers = [];
  for (const label of labels) {
    const peer = await c.connect(label);
    await joinRoom(peer, room, peers.map((p) => [p, p.label]));
    peers.push(peer);
  }
  return { room, peers };
}

/** `from` relays a marker to `to`, which must receive it as its very next event. */
async function barrier(from, to, tag) {
  const data = { barrier: tag };
  from.relayTo(to, data);
  await to.expectRelay(from, data, `barrier "${tag}" (nothing may arrive before it)`);
}

/** `peer` sends `check-room` and must be answered `room-check-ok { roomId, passwordRequired }`. */
async function checkOk(peer, roomId, password, passwordRequired, what) {
  peer.emit('check-room', password === undefined ? { roomId } : { roomId, password });
  await peer.expectExactly('room-check-ok', { roomId, passwordRequired }, `check-room: ${what}`);
}

/**
 * `peer` sends `event` (join-room or check-room) with `payload` and must be refused with
 * `join-error { roomId, reason, message }`; `rate-limited` also carries `retryAfterMs`.
 */
async function refusedJoin(peer, event, payload, reason, what) {
  peer.emit(event, payload);
  const roomId = typeof payload?.roomId === 'string' && reason !== 'invalid-room' ? payload.roomId : undefined;
  const got = await peer.expectJoinError(reason, roomId, `${event}: ${what}`);
  assert.equal(typeof got.message, 'string', `${peer.label}: join-error message for ${event}: ${what}: ${show(got)}`);
  assert.ok(got.message.length > 0, `${peer.label}: empty join-error message for ${event}: ${what}`);
  if (reason === 'rate-limited') {
    assert.ok(Number.isInteger(got.retryAfterMs) && got.retryAfterMs > 0 && got.retryAfterMs <= 60_000,
      `${peer.label}: rate-limited needs an integer retryAfterMs in 1..=60000 for ${event}: ${what}: ${show(got)}`);
  }
  return got;
}

/**
 * Reads `peer`'s join backfill up to and including `join-ok { roomId }` and asserts it is
 * exactly `groups`, one per member (`[['user-connected', ...], ['media-state', ...]?]`), in any
 * member order: nothing else (no chat, no echo) may be replayed to a joiner.
 */
async function expectBackfill(peer, roomId, groups, what) {
  const seen = [];
  for (;;) {
    const m = await peer.next(`${what}: the backfill, then join-ok`);
    assert.equal(m.extra.length, 0, `${peer.label}: ${m.event} carried extra arguments ${show(m.extra)}`);
    if (m.event === 'join-ok') {
      assert.deepEqual(m.payload, { roomId }, `${peer.label}: join-ok payload (${what})`);
      break;
    }
    seen.push([m.event, m.payload]);
    assert.ok(seen.length <= 2 * groups.length, `${peer.label}: backfill too long (${what}): ${show(seen)}`);
  }
  const got = [];
  for (const e of seen) {
    if (e[0] === 'user-connected' || got.length === 0) got.push([e]);
    else got.at(-1).push(e);
  }
  const unmatched = [...groups];
  const ok = got.length === groups.length && got.every((g) => {
    const i = unmatched.findIndex((want) => isDeepStrictEqual(g, want));
    if (i >= 0) unmatched.splice(i, 1);
    return i >= 0;
  });
  assert.ok(ok, `${peer.label}: ${what}: expected the backfill ${show(groups)} (any member order), then join-ok; got ${show(seen)}`);
}

/** `peer` leaves `roomId`; `others` (its remaining members) hear it once. */
async function leaveRoom(peer, roomId, others) {
  peer.emit('leave-room', { roomId });
  for (const other of others) {
    await other.expectExactly('#rtcio:peer-left', { id: peer.id }, `${peer.label} left, at ${other.label}`);
    await other.expectExactly('user-disconnected', { id: peer.id }, `${peer.label} left, at ${other.label}`);
  }
}

function fakeSdp(type, bytes = 3000) {
  const lines = ['v=0', `o=- ${Date.now()} 2 IN IP4 127.0.0.1`, 's=-', 't=0 0', 'a=group:BUNDLE 0 1'];
  for (let i = 0; lines.join('\r\n').length < bytes; i++) {
    lines.push(`a=candidate:${i} 1 udp ${2122260223 - i} 192.168.1.${i % 250} ${50000 + i} typ host`);
    lines.push(`a=ssrc:${1000 + i} cname:${type}-${i}`);
  }
  return lines.join('\r\n') + '\r\n';
}

function candidates(prefix, n) {
  const out = [];
  for (let i = 0; i < n; i++) {
    out.push({
      candidate: {
        candidate: `candidate:${prefix}${i} 1 udp ${2122260223 - i} 10.0.${i >> 8}.${i & 255} ${40000 + i} typ host`,
        sdpMid: String(i % 2),
        sdpMLineIndex: i % 2,
        usernameFragment: `${prefix}frag`,
      },
    });
  }
  // An empty candidate ends the trickle.
  out.push({ candidate: { candidate: '', sdpMid: '0', sdpMLineIndex: 0 } });
  return out;
}

// ---------------------------------------------------------------- tests

const TRANSPORTS = [
  ['websocket', ['websocket']],
  ['polling then upgrade (default)', undefined],
];

for (const [transportName, transports] of TRANSPORTS) {
  describe(`over ${transportName}`, () => {
    test('two-client call set-up: roster, init-offer, server-stamped relay, ordered trickle', async (t) => {
      const c = clients(t, transports);
      const a = await c.connect('alice');
      const b = await c.connect('bob');
      const room = uniqueRoom('call');

      await joinEmpty(a, room, 'Alice');
      // Includes A's #rtcio:init-offer: the existing member makes the offer.
      await joinRoom(b, room, [[a, 'Alice']], 'Bob');

      // A offers with a spoofed source and trickles right behind the offer, as rtc.io does.
      const offer = { description: { type: 'offer', sdp: fakeSdp('offer') } };
      const aCandidates = candidates('a', 50);
      a.relayTo(b, offer, 'spoofed');
      for (const data of aCandidates) a.relayTo(b, data, 'spoofed');
      const gotOffer = await b.expectRelay(a, offer, 'offer');
      assert.equal(gotOffer.source, a.id, 'source is stamped by the server, not the spoofed one');
      for (const [i, data] of aCandidates.entries()) {
        await b.expectRelay(a, data, `A's candidate #${i} (order must be preserved)`);
      }

      // B answers and both sides trickle at the same time.
      const answer = { description: { type: 'answer', sdp: fakeSdp('answer') } };
      const bCandidates = candidates('b', 50);
      const moreA = candidates('a2-', 20);
      b.relayTo(a, answer);
      for (const data of bCandidates) b.relayTo(a, data);
      for (const data of moreA) a.relayTo(b, data);
      await a.expectRelay(b, answer, 'answer');
      for (const [i, data] of bCandidates.entries()) {
        await a.expectRelay(b, data, `B's candidate #${i} (order must be preserved)`);
      }
      for (const [i, data] of moreA.entries()) {
        await b.expectRelay(a, data, `A's late candidate #${i} (order must be preserved)`);
      }

      // rtc.io's stream metadata exchange is opaque to the relay too.
      a.relayTo(b, { mid: '0' });
      await b.expectRelay(a, { mid: '0' }, 'metadata request');
      b.relayTo(a, { mid: '0', events: { kind: 'video', tags: ['camera'], n: null } });
      await a.expectRelay(b, { mid: '0', events: { kind: 'video', tags: ['camera'], n: null } }, 'metadata answer');

      // A relay of almost the whole 64 KiB cap still goes through.
      const big = { description: { type: 'offer', sdp: 's'.repeat(60_000) } };
      a.relayTo(b, big);
      await b.expectRelay(a, big, '60 kB offer');

      a.assertDrained('at the end');
      b.assertDrained('at the end');
    });

    test('media-state: echo with server id, extra fields kept, backfill for a late joiner', async (t) => {
      const c = clients(t, transports);
      const a = await c.connect('alice');
      const b = await c.connect('bob');
      const room = uniqueRoom('media');
      await joinEmpty(a, room, 'Alice');
      await joinRoom(b, room, [[a, 'Alice']], 'Bob');

      a.emit('media-state', { roomId: room, mic: true, cam: true });
      await b.expectExactly('media-state', { roomId: room, mic: true, cam: true, id: a.id }, 'first echo');

      a.emit('media-state', { roomId: room, mic: false, cam: true, extra: 'x', nested: { k: [1, 2] }, id: 'spoofed' });
      await b.expectExactly('media-state',
        { roomId: room, mic: false, cam: true, extra: 'x', nested: { k: [1, 2] }, id: a.id },
        'echo keeps extra fields and has the server-set id');

      // The sender hears no echo of its own state.
      await barrier(b, a, 'no media-state echo to the sender');

      // A late joiner gets the roster with A's latest cached state, before join-ok. B never
      // announced a state, so it gets none for B.
      const carol = await c.connect('carol');
      carol.emit('join-room', { roomId: room, name: 'Carol' });
      const seen = [];
      for (;;) {
        const m = await carol.next('the roster, then join-ok');
        seen.push([m.event, m.payload]);
        if (m.event === 'join-ok' || seen.length > 10) break;
      }
      const expectedA = [
        ['user-connected', userConnected(a, 'Alice')],
        ['media-state', { id: a.id, roomId: room, mic: false, cam: true }],
      ];
      const expectedB = [['user-connected', userConnected(b, 'Bob')]];
      const ok = [['join-ok', { roomId: room }]];
      const orders = [[...expectedA, ...expectedB, ...ok], [...expectedB, ...expectedA, ...ok]];
      assert.ok(orders.some((o) => isDeepStrictEqual(seen, o)),
        `Carol's join: expected user-connected A + media-state A backfill + user-connected B (any member order), then join-ok; got ${show(seen)}`);
      for (const member of [a, b]) {
        await member.expectExactly('user-connected', userConnected(carol, 'Carol'), `${member.label} learns of Carol`);
        await member.expectExactly('#rtcio:init-offer', { source: carol.id }, `${member.label} offers to Carol`);
      }

      // Echoes now reach the newcomer as well.
      b.emit('media-state', { roomId: room, mic: true, cam: false });
      for (const member of [a, carol]) {
        await member.expectExactly('media-state', { roomId: room, mic: true, cam: false, id: b.id }, `B's echo at ${member.label}`);
      }
      await barrier(a, b, 'no echo of B to B');
      for (const p of [a, b, carol]) p.assertDrained('at the end');
    });

    test('stopScreenShare is echoed to the others with the server id, not to the sender', async (t) => {
      const c = clients(t, transports);
      const { room, peers: [a, b, carol] } = await roomWith(c, 'screen', ['alice', 'bob', 'carol']);

      a.emit('stopScreenShare', { roomId: room, streamId: 'screen-1', id: 'spoofed' });
      for (const other of [b, carol]) {
        await other.expectExactly('stopScreenShare', { roomId: room, streamId: 'screen-1', id: a.id },
          `A's stopScreenShare at ${other.label}`);
      }
      await barrier(b, a, 'no stopScreenShare echo to the sender');
      for (const p of [a, b, carol]) p.assertDrained('at the end');
    });

    test('leave-room: the others hear peer-left and user-disconnected exactly once', async (t) => {
      const c = clients(t, transports);
      const { room, peers: [a, b, carol] } = await roomWith(c, 'leave', ['alice', 'bob', 'carol']);
      a.emit('media-state', { roomId: room, mic: true, cam: true });
      for (const other of [b, carol]) await other.expect('media-state', `A's state at ${other.label}`);

      a.emit('leave-room', { roomId: room });
      for (const other of [b, carol]) {
        await other.expectExactly('#rtcio:peer-left', { id: a.id }, `A left, at ${other.label}`);
        await other.expectExactly('user-disconnected', { id: a.id }, `A left, at ${other.label}`);
      }
      // A's leave has been handled once A's next event is answered: A is out of the room.
      a.emit('media-state', { roomId: room, mic: false, cam: false });
      await a.expectError('media-state', 'not-in-room', 'echo into a room A has left');

      // Probe through the same path (a membership change in the room): a newcomer's join must
      // be the next thing the members hear, so no second peer-left/user-disconnected came.
      // The newcomer's roster must not contain A, nor A's dropped media state.
      const dave = await c.connect('dave');
      await joinRoom(dave, room, [[b, 'bob'], [carol, 'carol']]);

      // A no longer shares a room with anyone: relays to and from it are refused.
      b.relayTo(a, { probe: 1 });
      await b.expectError('#rtcio:message', 'unknown-target', 'relay to a socket that left');
      a.relayTo(b, { probe: 2 });
      await a.expectError('#rtcio:message', 'unknown-target', 'relay from a socket that left');
      await barrier(carol, b, 'B got nothing from A after it left');
      await barrier(carol, dave, 'Dave got nothing from A');

      // Rejoining works and is announced once more, without the old media state.
      await joinRoom(a, room, [[b, 'bob'], [carol, 'carol'], [dave, 'dave']]);
      for (const p of [a, b, carol, dave]) p.assertDrained('at the end');
    });

    test('disconnect: every room of the socket hears it exactly once', async (t) => {
      const c = clients(t, transports);
      const a = await c.connect('alice');
      const b = await c.connect('bob');
      const carol = await c.connect('carol');
      const room1 = uniqueRoom('disc1');
      const room2 = uniqueRoom('disc2');
      await joinEmpty(a, room1);
      await joinEmpty(a, room2);
      await joinRoom(b, room1, [[a, 'alice']]);
      await joinRoom(carol, room2, [[a, 'alice']]);
      const aId = a.id;

      a.socket.disconnect();
      for (const other of [b, carol]) {
        await other.expectExactly('#rtcio:peer-left', { id: aId }, `A disconnected, at ${other.label}`);
        await other.expectExactly('user-disconnected', { id: aId }, `A disconnected, at ${other.label}`);
      }
      // Probe both rooms through the same path: a newcomer's join comes next, nothing else.
      const dave = await c.connect('dave');
      await joinRoom(dave, room1, [[b, 'bob']]);
      await joinRoom(dave, room2, [[carol, 'carol']]);

      // A transport that just goes away (tab closed) is a disconnect too.
      const erin = await c.connect('erin');
      await joinRoom(erin, room1, [[b, 'bob'], [dave, 'dave']]);
      const erinId = erin.id;
      erin.socket.io.engine.close();
      for (const other of [b, dave]) {
        await other.expectExactly('#rtcio:peer-left', { id: erinId }, `Erin's transport closed, at ${other.label}`);
        await other.expectExactly('user-disconnected', { id: erinId }, `Erin's transport closed, at ${other.label}`);
      }
      const frank = await c.connect('frank');
      await joinRoom(frank, room1, [[b, 'bob'], [dave, 'dave']]);
      for (const p of [b, carol, dave, frank]) p.assertDrained('at the end');
    });

    test('concurrent joins: each pair meets once, one init-offer per pair, full rosters', async (t) => {
      const c = clients(t, transports);
      const room = uniqueRoom('burst');
      const peers = await Promise.all(['p0', 'p1', 'p2', 'p3', 'p4', 'p5'].map((l) => c.connect(l)));
      for (const p of peers) p.emit('join-room', { roomId: room, name: p.label });

      // Everyone ends up knowing the other five.
      const connectedTo = new Map(peers.map((p) => [p, []]));
      const offersTo = new Map(peers.map((p) => [p, []]));
      const joined = new Set();
      await Promise.all(peers.map(async (p) => {
        while (connectedTo.get(p).length < peers.length - 1 || !joined.has(p)) {
          const m = await p.next('the roster of a concurrent join');
          if (m.event === 'user-connected') connectedTo.get(p).push(m.payload.id);
          else if (m.event === '#rtcio:init-offer') offersTo.get(p).push(m.payload.source);
          else if (m.event === 'join-ok') joined.add(p);
          else assert.fail(`${p.label}: unexpected ${m.event} ${show(m.payload)}`);
        }
      }));
      // Probe: a late join is the next membership event everyone sees, so no duplicate
      // announcement is still on its way. Each member hears of the prober then is asked to offer;
      // init-offers of the burst may still sit in front of that.
      const probe = await c.connect('probe');
      probe.emit('join-room', { roomId: room, name: 'probe' });
      for (const p of peers) {
        for (;;) {
          const m = await p.next('user-connected for the probe');
          if (m.event === '#rtcio:init-offer') { offersTo.get(p).push(m.payload.source); continue; }
          assert.equal(m.event, 'user-connected', `${p.label}: unexpected ${m.event} ${show(m.payload)}`);
          assert.equal(m.payload.id, probe.id, `${p.label}: duplicate or late user-connected ${show(m.payload)}`);
          break;
        }
        await p.expectExactly('#rtcio:init-offer', { source: probe.id }, `${p.label} offers to the probe`);
      }
      const probeRoster = [];
      for (;;) {
        const m = await probe.next('the probe roster');
        if (m.event === 'join-ok') break;
        assert.equal(m.event, 'user-connected', `probe: unexpected ${m.event}`);
        probeRoster.push(m.payload.id);
      }
      assert.deepEqual([...probeRoster].sort(), peers.map((p) => p.id).sort(), 'probe roster');

      for (const p of peers) {
        const others = peers.filter((q) => q !== p).map((q) => q.id).sort();
        assert.deepEqual([...connectedTo.get(p)].sort(), others, `${p.label}: exactly one user-connected per other member`);
      }
      for (let i = 0; i < peers.length; i++) {
        for (let j = i + 1; j < peers.length; j++) {
          const [p, q] = [peers[i], peers[j]];
          const n = offersTo.get(p).filter((s) => s === q.id).length + offersTo.get(q).filter((s) => s === p.id).length;
          assert.equal(n, 1, `pair ${p.label}/${q.label}: ${n} init-offers between them, expected exactly 1`);
        }
      }
      for (const p of [...peers, probe]) p.assertDrained('at the end');
    });

    test('auth: refusals as connect_error, name claim wins, rooms claim forbids', async (t) => {
      const c = clients(t, transports);
      const sub = 'user-auth';
      const cases = [
        ['no auth at all', {}, 'missing token'],
        ['auth without token', { auth: {} }, 'missing token'],
        ['empty token', { auth: { token: '' } }, 'missing token'],
        ['bad signature', { auth: { token: token({ sub, key: 'another-secret-of-32-characters!' }) } }, 'invalid token'],
        ['alg: none', { auth: { token: unsignedToken({ sub, exp: nowSeconds() + 600 }) } }, 'invalid token'],
        ['malformed', { auth: { token: 'not.a.jwt' } }, 'invalid token'],
        ['no sub', { auth: { token: jwt.sign({ exp: nowSeconds() + 600 }, secret, { algorithm: 'HS256' }) } }, 'invalid token'],
        ['expired', { auth: { token: token({ sub, exp: nowSeconds() - 120 }) } }, 'token expired'],
      ];
      for (const [what, options, message] of cases) {
        const err = await c.refusal(`refused (${what})`, options);
        assert.equal(err.message, message, `connect_error message for ${what}`);
      }

      // The token's name wins over the name the client sends, on both sides of the roster.
      const room = uniqueRoom('auth');
      const a = await c.connect('alice', { name: 'Alice (token)' });
      const b = await c.connect('bob');
      await joinEmpty(a, room, 'Mallory');
      await joinRoom(b, room, [[a, 'Alice (token)']], 'Bob');

      // A `rooms` claim limits which rooms the token may join.
      const allowed = uniqueRoom('allowed');
      const limited = await c.connect('limited', { rooms: [allowed] });
      limited.emit('join-room', { roomId: room, name: 'L' });
      await limited.expectJoinError('forbidden', room, 'a room outside the rooms claim');
      await joinEmpty(limited, allowed, 'L');
      // Nobody in the forbidden room heard of it.
      await barrier(a, b, 'no user-connected for a forbidden join');
      await barrier(b, a, 'no user-connected for a forbidden join');
      for (const p of [a, b, limited]) p.assertDrained('at the end');
    });

    test('isolation: no echo or relay outside the rooms a socket has joined', async (t) => {
      const c = clients(t, transports);
      const { room, peers: [a, b] } = await roomWith(c, 'iso', ['alice', 'bob']);
      const { peers: [x, y] } = await roomWith(c, 'iso-other', ['xavier', 'yvonne']);

      x.emit('media-state', { roomId: room, mic: true, cam: true });
      await x.expectError('media-state', 'not-in-room', 'media-state into a room X is not in');
      x.emit('stopScreenShare', { roomId: room });
      await x.expectError('stopScreenShare', 'not-in-room', 'stopScreenShare into a room X is not in');
      x.relayTo(b, { description: { type: 'offer', sdp: 'v=0\r\n' } });
      await x.expectError('#rtcio:message', 'unknown-target', 'relay to a socket X shares no room with');
      x.relayTo({ id: 'no-such-socket' }, { candidate: {} });
      await x.expectError('#rtcio:message', 'unknown-target', 'relay to a socket id that does not exist');

      // Members of the room heard nothing, and X's own room (Y) heard nothing either.
      await barrier(a, b, 'B got nothing from X');
      await barrier(b, a, 'A got nothing from X');
      await barrier(x, y, 'Y got nothing');
      await barrier(y, x, 'X is still fine');

      // X's refused media state was not cached: a late joiner of the room gets no trace of X.
      const carol = await c.connect('carol');
      await joinRoom(carol, room, [[a, 'alice'], [b, 'bob']]);
      for (const p of [a, b, x, y, carol]) p.assertDrained('at the end');
    });

    test('bad input gets the sender an error, changes nothing, and the sockets keep working', async (t) => {
      const c = clients(t, transports);
      const { room, peers: [a, b] } = await roomWith(c, 'bad', ['alice', 'bob']);
      const n = await c.connect('newcomer');

      // Bad joins aimed at the room, from a socket outside it.
      const tooLong = 'r'.repeat(129);
      n.emit('join-room', { roomId: tooLong, name: 'N' });
      await n.expectJoinError('invalid-room', undefined, '129-character roomId');
      n.emit('join-room', { roomId: '', name: 'N' });
      await n.expectJoinError('invalid-room', undefined, 'empty roomId');
      n.emit('join-room', { roomId: 'a\nb', name: 'N' });
      await n.expectJoinError('invalid-room', undefined, 'roomId with a control character');
      n.emit('join-room', { roomId: 5, name: 'N' });
      await n.expectJoinError('invalid-room', undefined, 'numeric roomId');
      n.emit('join-room', { name: 'N' });
      await n.expectJoinError('invalid-room', undefined, 'missing roomId');
      n.emit('join-room', { roomId: room, name: 7 });
      await n.expectJoinError('invalid-name', room, 'numeric name');
      n.emit('join-room', { roomId: room, name: 'n'.repeat(65) });
      await n.expectJoinError('invalid-name', room, '65-character name');
      // The contract names no reason for these; any clear one will do.
      n.emit('join-room', room);
      await n.expectJoinError(null, undefined, 'payload is a string');
      n.emit('join-room');
      await n.expectJoinError(null, undefined, 'no payload');
      n.emit('join-room', [room]);
      await n.expectJoinError(null, undefined, 'payload is an array');

      // Bad events from a member of the room.
      const bad = [
        ['media-state', [{ roomId: room, mic: 'yes', cam: true }], 'invalid-payload', 'mic not a boolean'],
        ['media-state', [{ roomId: room }], 'invalid-payload', 'mic and cam missing'],
        ['media-state', [{ mic: true, cam: true }], 'invalid-room', 'roomId missing'],
        ['media-state', ['just a string'], 'invalid-payload', 'string payload'],
        ['stopScreenShare', [{}], 'invalid-room', 'roomId missing'],
        ['stopScreenShare', [{ roomId: 5 }], 'invalid-room', 'numeric roomId'],
        ['stopScreenShare', [42], 'invalid-payload', 'number payload'],
        ['#rtcio:message', [{}], 'invalid-payload', 'empty relay'],
        ['#rtcio:message', [{ source: 'x', target: b.id }], 'invalid-payload', 'relay without data'],
        ['#rtcio:message', [{ target: 5, data: {} }], 'invalid-payload', 'numeric target'],
        ['#rtcio:message', ['just a string'], 'invalid-payload', 'string payload'],
        ['#rtcio:message', [], 'invalid-payload', 'no payload'],
        ['leave-room', [{}], 'invalid-room', 'roomId missing'],
        ['#rtcio:message', [{ source: a.id, target: b.id, data: { description: { type: 'offer', sdp: 'x'.repeat(70_000) } } }],
          'payload-too-large', '70,000-byte relay'],
        ['media-state', [{ roomId: room, mic: true, cam: true, blob: 'y'.repeat(70_000) }],
          'payload-too-large', '70,000-byte media-state'],
      ];
      for (const [event, args, code, what] of bad) {
        a.emit(event, ...args);
        await a.expectError(event, code, `${event}: ${what}`);
      }

      // The members heard nothing of any of it: the newcomer's proper join is the first thing
      // they get (a membership change, after every bad event above was answered).
      await joinRoom(n, room, [[a, 'alice'], [b, 'bob']], 'N');

      // And the same sockets still work normally.
      const offer = { description: { type: 'offer', sdp: fakeSdp('offer') } };
      a.relayTo(b, offer);
      await b.expectRelay(a, offer, 'a normal offer after the bad input');
      b.relayTo(a, { candidate: { candidate: 'candidate:1 1 udp 1 10.0.0.1 9 typ host', sdpMid: '0', sdpMLineIndex: 0 } });
      await a.expectRelay(b, { candidate: { candidate: 'candidate:1 1 udp 1 10.0.0.1 9 typ host', sdpMid: '0', sdpMLineIndex: 0 } });
      a.emit('media-state', { roomId: room, mic: true, cam: false });
      for (const other of [b, n]) {
        await other.expectExactly('media-state', { roomId: room, mic: true, cam: false, id: a.id }, `echo at ${other.label}`);
      }
      n.relayTo(a, { mid: '0' });
      await a.expectRelay(n, { mid: '0' });
      for (const p of [a, b, n]) p.assertDrained('at the end');
    });

    // ------------------------------------------------ check-room, passwords, guessing, chat

    test('check-room: answers the sender alone with room-check-ok or the join-error a join would get, changing nothing', async (t) => {
      const c = clients(t, transports);
      const pw = c.password();
      const locked = uniqueRoom('check-locked');
      const a = await c.connect('alice');
      const b = await c.connect('bob');
      await joinEmpty(a, locked, 'alice', pw);
      await joinRoom(b, locked, [[a, 'alice']], 'bob', pw);
      const { room: open, peers: [o1, o2] } = await roomWith(c, 'check-open', ['olga', 'oscar']);
      const n = await c.connect('newcomer');
      const unknown = uniqueRoom('check-unknown');

      // An unknown (empty) room: no password needed, whatever the checker sends.
      await checkOk(n, unknown, undefined, false, 'unknown room, no password');
      await checkOk(n, unknown, c.password(), false, 'unknown room, with a password');
      await checkOk(n, unknown, 'p'.repeat(256), false, 'unknown room, 256-character password');
      // A room with members and no password admits anyone.
      await checkOk(n, open, undefined, false, 'open room, no password');
      await checkOk(n, open, c.password(), false, 'open room, some password');
      await checkOk(n, open, '   ', false, 'open room, whitespace password');
      // A locked room.
      await checkOk(n, locked, pw, true, 'locked room, the right password');
      await checkOk(n, locked, `  ${pw}  `, true, 'locked room, the right password with surrounding spaces');
      await refusedJoin(n, 'check-room', { roomId: locked }, 'password-required', 'locked room, no password');
      await refusedJoin(n, 'check-room', { roomId: locked, password: '' }, 'password-required', 'locked room, empty password');
      await refusedJoin(n, 'check-room', { roomId: locked, password: '   ' }, 'password-required', 'locked room, whitespace password');
      await refusedJoin(n, 'check-room', { roomId: locked, password: `${pw}x` }, 'wrong-password', 'locked room, wrong password');
      // Bad input.
      await refusedJoin(n, 'check-room', { roomId: unknown, password: 5 }, 'invalid-password', 'numeric password');
      await refusedJoin(n, 'check-room', { roomId: unknown, password: { pw } }, 'invalid-password', 'object password');
      await refusedJoin(n, 'check-room', { roomId: unknown, password: 'p'.repeat(257) }, 'invalid-password', '257-character password');
      await refusedJoin(n, 'check-room', { roomId: '' }, 'invalid-room', 'empty roomId');
      await refusedJoin(n, 'check-room', { roomId: 'r'.repeat(129) }, 'invalid-room', '129-character roomId');
      await refusedJoin(n, 'check-room', { roomId: 'a\nb' }, 'invalid-room', 'roomId with a control character');
      await refusedJoin(n, 'check-room', { roomId: 5 }, 'invalid-room', 'numeric roomId');
      await refusedJoin(n, 'check-room', { password: pw }, 'invalid-room', 'missing roomId');
      n.emit('check-room', locked);
      await n.expectJoinError(null, undefined, 'check-room: payload is a string');
      // The rooms claim.
      const allowed = uniqueRoom('check-allowed');
      const limited = await c.connect('limited', { rooms: [allowed] });
      await refusedJoin(limited, 'check-room', { roomId: open }, 'forbidden', 'a room outside the rooms claim');
      await checkOk(limited, allowed, undefined, false, 'the room the claim allows');

      // None of it made the checker a member...
      n.emit('media-state', { roomId: locked, mic: true, cam: true });
      await n.expectError('media-state', 'not-in-room', 'check-room does not join');
      // ...nor set a password on the unknown room: its first joiner needs none, and sets none.
      const u = await c.connect('ursula');
      await joinEmpty(u, unknown, 'ursula');
      await checkOk(n, unknown, undefined, false, 'the room its first joiner opened without a password');
      // The members heard nothing: the newcomer's join is the next thing they get.
      await joinRoom(n, locked, [[a, 'alice'], [b, 'bob']], 'newcomer', pw);
      await barrier(o1, o2, 'no check-room news in the open room');
      await barrier(o2, o1, 'no check-room news in the open room');
      // Ursula heard nothing either, and her room, opened without a password, admits any.
      await joinRoom(n, unknown, [[u, 'ursula']], 'newcomer', c.password());
      for (const p of [a, b, o1, o2, n, u, limited]) p.assertDrained('at the end');
    });

    test('check-room and join-room: room-full at 50 members; a place freed is a place to take', async (t) => {
      const c = clients(t, transports);
      const pw = c.password();
      const room = uniqueRoom('full');
      const labels = Array.from({ length: 50 }, (_, i) => `m${i}`);
      const members = await Promise.all(labels.map((l) => c.connect(l)));
      for (const [i, m] of members.entries()) {
        await joinRoom(m, room, members.slice(0, i).map((p) => [p, p.label]), m.label, pw);
      }
      const n = await c.connect('newcomer');
      await refusedJoin(n, 'check-room', { roomId: room, password: pw }, 'room-full', 'a full room, the right password');
      await refusedJoin(n, 'join-room', { roomId: room, name: 'N', password: pw }, 'room-full', 'a full room, the right password');
      for (const m of members.slice(1)) await barrier(members[0], m, 'nothing about the refused newcomer');
      await barrier(members[1], members[0], 'nothing about the refused newcomer');

      const last = members.pop();
      await leaveRoom(last, room, members);
      await checkOk(n, room, pw, true, 'a place was freed');
      await joinRoom(n, room, members.map((p) => [p, p.label]), 'newcomer', pw);
      for (const p of [...members, n]) p.assertDrained('at the end');
    });

    test('passwords: the first joiner sets one, later joiners need it (trimmed), it goes when the room empties', async (t) => {
      const c = clients(t, transports);
      const pw = c.password();
      const room = uniqueRoom('locked');
      const a = await c.connect('alice');
      const b = await c.connect('bob');
      await joinEmpty(a, room, 'alice', `  ${pw}  `);

      await refusedJoin(b, 'join-room', { roomId: room, name: 'bob' }, 'password-required', 'no password');
      await refusedJoin(b, 'join-room', { roomId: room, name: 'bob', password: '' }, 'password-required', 'empty password');
      await refusedJoin(b, 'join-room', { roomId: room, name: 'bob', password: '   ' }, 'password-required', 'whitespace password');
      await refusedJoin(b, 'join-room', { roomId: room, name: 'bob', password: c.password() }, 'wrong-password', 'another password');
      await refusedJoin(b, 'join-room', { roomId: room, name: 'bob', password: 5 }, 'invalid-password', 'numeric password');
      await refusedJoin(b, 'join-room', { roomId: room, name: 'bob', password: 'p'.repeat(257) }, 'invalid-password', '257-character password');
      // A heard nothing of those: B's proper join is the next thing it gets.
      await joinRoom(b, room, [[a, 'alice']], 'bob', pw);
      const carol = await c.connect('carol');
      await joinRoom(carol, room, [[a, 'alice'], [b, 'bob']], 'carol', ` ${pw} `);

      // A room whose first joiner gave no password (or a blank one) admits anyone.
      for (const [i, first] of [undefined, '   '].entries()) {
        const open = uniqueRoom('open');
        const x = await c.connect(`xavier${i}`);
        const y = await c.connect(`yvonne${i}`);
        const z = await c.connect(`zoe${i}`);
        await joinEmpty(x, open, 'xavier', first);
        await joinRoom(y, open, [[x, 'xavier']], 'yvonne', c.password());
        await joinRoom(z, open, [[x, 'xavier'], [y, 'yvonne']], 'zoe', '  ');
        await checkOk(carol, open, undefined, false, 'an open room');
        for (const p of [x, y, z]) p.assertDrained('in the open room');
      }

      // Emptied by leave-room: the password is gone; the next first joiner sets a new one.
      await leaveRoom(a, room, [b, carol]);
      await leaveRoom(b, room, [carol]);
      carol.emit('leave-room', { roomId: room });
      carol.emit('media-state', { roomId: room, mic: true, cam: true });
      await carol.expectError('media-state', 'not-in-room', 'the last member has left');
      const pw2 = c.password();
      const d = await c.connect('dave');
      const e = await c.connect('erin');
      await joinEmpty(d, room, 'dave', pw2);
      await refusedJoin(e, 'join-room', { roomId: room, name: 'erin', password: pw }, 'wrong-password', 'the old password');
      await refusedJoin(e, 'check-room', { roomId: room }, 'password-required', 'locked again, by its new first joiner');
      await joinRoom(e, room, [[d, 'dave']], 'erin', pw2);

      // Emptied by disconnects: the next first joiner, with no password, opens it.
      d.socket.disconnect();
      await e.expectExactly('#rtcio:peer-left', { id: d.id }, 'Dave disconnected');
      await e.expectExactly('user-disconnected', { id: d.id }, 'Dave disconnected');
      e.socket.disconnect();
      const f = await c.connect('frank');
      // Until the server has handled Erin's disconnect the room is still locked; no sleeping.
      for (let tries = 0; ; tries++) {
        f.emit('check-room', { roomId: room });
        const m = await f.next('check-room while the room empties');
        if (m.event === 'room-check-ok') {
          assert.deepEqual(m.payload, { roomId: room, passwordRequired: false }, 'the emptied room');
          break;
        }
        assert.equal(m.event, 'join-error', `frank: unexpected ${m.event} ${show(m.payload)}`);
        assert.equal(m.payload.reason, 'password-required', `frank: ${show(m.payload)}`);
        assert.ok(tries < 500, 'the room never emptied after its last member disconnected');
      }
      await joinEmpty(f, room, 'frank');
      const g = await c.connect('grace');
      await joinRoom(g, room, [[f, 'frank']], 'grace', pw2);
      for (const p of [carol, f, g]) p.assertDrained('at the end');
    });

    test('passwords: concurrent first joins with different passwords, one wins and the other gets wrong-password', async (t) => {
      const c = clients(t, transports);
      await Promise.all(Array.from({ length: 10 }, async (_, i) => {
        const room = uniqueRoom(`race${i}`);
        const [x, y] = await Promise.all([c.connect(`x${i}`), c.connect(`y${i}`)]);
        const passwords = new Map([[x, c.password()], [y, c.password()]]);
        x.emit('join-room', { roomId: room, name: x.label, password: passwords.get(x) });
        y.emit('join-room', { roomId: room, name: y.label, password: passwords.get(y) });
        const [mx, my] = await Promise.all([x.next('the first join'), y.next('the first join')]);
        const oks = [[x, mx], [y, my]].filter(([, m]) => m.event === 'join-ok');
        assert.equal(oks.length, 1, `room ${i}: exactly one first joiner wins; got ${show([[mx.event, mx.payload], [my.event, my.payload]])}`);
        const [winner, won] = oks[0];
        const [loser, lost] = winner === x ? [y, my] : [x, mx];
        assert.deepEqual(won.payload, { roomId: room }, `room ${i}: join-ok payload`);
        assert.equal(lost.event, 'join-error', `room ${i}: the loser's reply ${lost.event} ${show(lost.payload)}`);
        assert.equal(lost.payload?.reason, 'wrong-password', `room ${i}: the loser's join-error ${show(lost.payload)}`);
        assert.equal(lost.payload.roomId, room, `room ${i}: the loser's join-error roomId`);
        // The winner's password is the room's: the loser gets in with it.
        await joinRoom(loser, room, [[winner, winner.label]], loser.label, passwords.get(winner));
        for (const p of [x, y]) p.assertDrained(`room ${i} at the end`);
      }));
    });

    test('password guessing: five wrong passwords rate-limit the socket, even with the right one; no-password attempts do not count', async (t) => {
      const c = clients(t, transports);
      const pw1 = c.password();
      const pw2 = c.password();
      const r1 = uniqueRoom('guess1');
      const r2 = uniqueRoom('guess2');
      const [a1, a2, b1] = await Promise.all(['a1', 'a2', 'b1'].map((l) => c.connect(l)));
      await joinEmpty(a1, r1, 'a1', pw1);
      await joinRoom(a2, r1, [[a1, 'a1']], 'a2', pw1);
      await joinEmpty(b1, r2, 'b1', pw2);
      const g = await c.connect('guesser');
      const join = (password) => ({ roomId: r1, name: 'guesser', password });

      await refusedJoin(g, 'join-room', join(c.password()), 'wrong-password', 'wrong #1');
      await refusedJoin(g, 'check-room', { roomId: r1, password: c.password() }, 'wrong-password', 'wrong #2');
      // Attempts without a password are never counted.
      await refusedJoin(g, 'join-room', { roomId: r1, name: 'guesser' }, 'password-required', 'no password');
      await refusedJoin(g, 'join-room', join(''), 'password-required', 'empty password');
      await refusedJoin(g, 'join-room', join('   '), 'password-required', 'whitespace password');
      await refusedJoin(g, 'check-room', { roomId: r1 }, 'password-required', 'no password');
      await refusedJoin(g, 'check-room', { roomId: r1, password: '' }, 'password-required', 'empty password');
      await refusedJoin(g, 'check-room', { roomId: r1, password: '  ' }, 'password-required', 'whitespace password');
      await refusedJoin(g, 'join-room', join(c.password()), 'wrong-password', 'wrong #3');
      await refusedJoin(g, 'check-room', { roomId: r1, password: ` ${c.password()} ` }, 'wrong-password', 'wrong #4');
      await refusedJoin(g, 'join-room', join(c.password()), 'wrong-password', 'wrong #5');

      // Now every password attempt of this socket on a locked room is refused, right or not.
      await refusedJoin(g, 'join-room', join(pw1), 'rate-limited', 'the right password after five wrong ones');
      await refusedJoin(g, 'check-room', { roomId: r1, password: pw1 }, 'rate-limited', 'the right password after five wrong ones');
      await refusedJoin(g, 'join-room', { roomId: r2, name: 'guesser', password: pw2 }, 'rate-limited', 'another locked room');
      await refusedJoin(g, 'check-room', { roomId: r2, password: pw2 }, 'rate-limited', 'another locked room');
      // The guesser locked out only itself: another user with r1's password still gets in.
      const h = await c.connect('helen');
      await joinRoom(h, r1, [[a1, 'a1'], [a2, 'a2']], 'helen', pw1);
      // The guesser can still open a room of its own, and r2 still admits other sockets.
      await joinEmpty(g, uniqueRoom('guess-own'), 'guesser');
      await joinRoom(h, r2, [[b1, 'b1']], 'helen', pw2);
      // The members of r1 heard of none of the guesses.
      await barrier(a1, a2, 'no news of the guesses');
      await barrier(a2, a1, 'no news of the guesses');
      for (const p of [a1, a2, b1, g, h]) p.assertDrained('at the end');
    });

    test('password guessing: five wrong passwords in a room stop those who guessed there; a newcomer with the password still gets in', async (t) => {
      const c = clients(t, transports);
      const pw = c.password();
      const pw2 = c.password();
      const room = uniqueRoom('guess-room');
      const a = await c.connect('alice');
      const b = await c.connect('bob');
      await joinEmpty(a, room, 'alice', pw);
      await joinRoom(b, room, [[a, 'alice']], 'bob', pw);
      const other = uniqueRoom('guess-other');
      const o = await c.connect('olga');
      await joinEmpty(o, other, 'olga', pw2);

      // No-password attempts, many of them, count for nothing.
      const z = await c.connect('nopw');
      for (let i = 0; i < 4; i++) {
        await refusedJoin(z, 'join-room', { roomId: room, name: 'z', ...(i % 2 ? { password: '  ' } : {}) },
          'password-required', `no password #${i}`);
        await refusedJoin(z, 'check-room', { roomId: room, ...(i % 2 ? { password: '' } : {}) },
          'password-required', `no password #${i}`);
      }
      // Five sockets, one wrong password each.
      const guessers = await Promise.all([0, 1, 2, 3, 4].map((i) => c.connect(`s${i}`)));
      for (const [i, s] of guessers.entries()) {
        const password = c.password();
        if (i % 2) await refusedJoin(s, 'check-room', { roomId: room, password }, 'wrong-password', `wrong #${i + 1}`);
        else await refusedJoin(s, 'join-room', { roomId: room, name: s.label, password }, 'wrong-password', `wrong #${i + 1}`);
      }
      // The room has had its five: those who guessed there wait, even with the right password...
      await refusedJoin(guessers[0], 'join-room', { roomId: room, name: 's0', password: pw }, 'rate-limited', 'the right password after a wrong one');
      await refusedJoin(guessers[1], 'check-room', { roomId: room, password: c.password() }, 'rate-limited', 'another guess');
      // ...a newcomer gets one try: a wrong password is its last...
      const w = await c.connect('wrongcomer');
      await refusedJoin(w, 'check-room', { roomId: room, password: c.password() }, 'wrong-password', 'a newcomer\'s one try');
      await refusedJoin(w, 'join-room', { roomId: room, name: 'wrongcomer', password: pw }, 'rate-limited', 'after its one try');
      // ...and a newcomer with the right password gets in: guessers cannot lock a call.
      const k = await c.connect('latecomer');
      await checkOk(k, room, pw, true, 'the right password in a guessed-at room');
      await joinRoom(k, room, [[a, 'alice'], [b, 'bob']], 'latecomer', pw);
      // Another locked room admits the guessers.
      await joinRoom(guessers[2], other, [[o, 'olga']], 's2', pw2);
      // The members heard of none of the guesses.
      await barrier(a, b, 'no news of the guesses');
      await barrier(b, a, 'no news of the guesses');
      for (const p of [a, b, o, z, k, w, ...guessers]) p.assertDrained('at the end');
    });

    test('chat-message: echoed to the other members with the server id, not to the sender, other rooms, or late joiners', async (t) => {
      const c = clients(t, transports);
      const { room, peers: [a, b, carol] } = await roomWith(c, 'chat', ['alice', 'bob', 'carol']);
      const { room: otherRoom, peers: [x, y] } = await roomWith(c, 'chat-other', ['xavier', 'yvonne']);

      const sentAt = Date.now();
      a.emit('chat-message', { roomId: room, text: 'hello 👋', name: 'Alice', sentAt, nested: { k: [1, null] }, id: 'spoofed' });
      for (const other of [b, carol]) {
        await other.expectExactly('chat-message',
          { roomId: room, text: 'hello 👋', name: 'Alice', sentAt, nested: { k: [1, null] }, id: a.id },
          `A's chat at ${other.label}`);
      }
      b.emit('chat-message', { roomId: room, text: 'hi' });
      for (const other of [a, carol]) {
        await other.expectExactly('chat-message', { roomId: room, text: 'hi', id: b.id }, `B's chat at ${other.label}`);
      }
      await barrier(b, a, 'no chat echo to the sender');
      await barrier(a, b, 'no chat echo to the sender');
      await barrier(x, y, 'no chat from another room');
      await barrier(y, x, 'no chat from another room');

      // A non-member's chat is refused and heard by nobody; so are bad room ids.
      x.emit('chat-message', { roomId: room, text: 'let me in' });
      await x.expectError('chat-message', 'not-in-room', 'chat into a room X is not in');
      a.emit('chat-message', { text: 'no room' });
      await a.expectError('chat-message', 'invalid-room', 'roomId missing');
      a.emit('chat-message', { roomId: 5, text: 'numeric room' });
      await a.expectError('chat-message', 'invalid-room', 'numeric roomId');
      a.emit('chat-message', { roomId: 'r'.repeat(129), text: 'long room' });
      await a.expectError('chat-message', 'invalid-room', '129-character roomId');
      a.emit('chat-message', { roomId: otherRoom, text: 'not mine' });
      await a.expectError('chat-message', 'not-in-room', 'chat into a room A is not in');
      await barrier(a, b, 'nothing from the refused chats');
      await barrier(b, carol, 'nothing from the refused chats');
      await barrier(carol, a, 'nothing from the refused chats');
      await barrier(x, y, 'nothing from the refused chats');
      await barrier(y, x, 'nothing from the refused chats');

      // Chat is not cached: a late joiner's backfill is the roster (and cached media state) only.
      a.emit('media-state', { roomId: room, mic: true, cam: false });
      for (const other of [b, carol]) await other.expect('media-state', `A's state at ${other.label}`);
      const dave = await c.connect('dave');
      dave.emit('join-room', { roomId: room, name: 'dave' });
      await expectBackfill(dave, room, [
        [['user-connected', userConnected(a, 'alice')], ['media-state', { id: a.id, roomId: room, mic: true, cam: false }]],
        [['user-connected', userConnected(b, 'bob')]],
        [['user-connected', userConnected(carol, 'carol')]],
      ], "Dave's join");
      for (const member of [a, b, carol]) {
        await member.expectExactly('user-connected', userConnected(dave, 'dave'), `${member.label} learns of Dave`);
        await member.expectExactly('#rtcio:init-offer', { source: dave.id }, `${member.label} offers to Dave`);
      }
      // From now on Dave hears the room's chat.
      carol.emit('chat-message', { roomId: room, text: 'welcome' });
      for (const other of [a, b, dave]) {
        await other.expectExactly('chat-message', { roomId: room, text: 'welcome', id: carol.id }, `Carol's chat at ${other.label}`);
      }
      await barrier(a, carol, 'no chat echo to the sender');
      for (const p of [a, b, carol, dave, x, y]) p.assertDrained('at the end');
    });
  });
}

// ---------------------------------------------------------------- session recovery

/**
 * A client following the README's recovery recipe with socket.io-client's own reconnection:
 * an `auth` callback that presents the last credential and the count of events received.
 * `until(check)` resolves once `check()` holds, re-checked on every incoming event.
 */
function recipeClient(t, sub) {
  const token = tokenFor(sub);
  const state = { resume: undefined, received: 0, sessions: [], events: [] };
  const waiters = [];
  const wake = () => {
    for (const w of [...waiters]) {
      if (w.check()) {
        waiters.splice(waiters.indexOf(w), 1);
        clearTimeout(w.timer);
        w.resolve();
      }
    }
  };
  const socket = io(serverUrl, {
    forceNew: true,
    transports: ['websocket'],
    reconnectionDelay: 50,
    reconnectionDelayMax: 100,
    timeout: WAIT_MS,
    auth: (cb) => cb({ token, resume: state.resume, received: state.received }),
  });
  socket.on('session', (s) => {
    state.resume = s.resume;
    if (!s.recovered) state.received = 0;
    state.sessions.push(s);
    wake();
  });
  socket.onAny((event, payload) => {
    if (event === 'session') return;
    state.received++;
    state.events.push([event, payload]);
    wake();
  });
  t.after(() => socket.disconnect());
  const until = (check, what) => new Promise((resolve, reject) => {
    if (check()) return resolve();
    const timer = setTimeout(() => reject(new Error(`${sub}: timed out waiting for ${what}; ` +
      `sessions ${show(state.sessions)}, events ${show(state.events)}`)), WAIT_MS);
    waiters.push({ check, resolve, timer });
  });
  /** Cuts the WebSocket's TCP connection without a close frame, as a network drop would. */
  const dropConnection = () => socket.io.engine.transport.ws._socket.destroy();
  return { socket, state, until, dropConnection };
}

const tokenFor = (sub) => token({ sub });

describe('session recovery (socket.io-client with the README recipe)', () => {
  test('a dropped connection comes back under the same peer id with every missed event once, in order; peers hear nothing', async (t) => {
    const c = clients(t, ['websocket']);
    const room = uniqueRoom('recover');
    const alice = await c.connect('alice');
    await joinEmpty(alice, room);
    const bob = recipeClient(t, 'user-bob');
    await bob.until(() => bob.state.sessions.length === 1, 'the first session');
    const bobId = bob.state.sessions[0].id;
    assert.equal(bobId, bob.socket.id, 'a fresh session takes its socket id');
    bob.socket.emit('join-room', { roomId: room, name: 'bob' });
    await alice.expectExactly('user-connected', { id: bobId, name: 'bob', userId: 'user-bob' });
    await alice.expectExactly('#rtcio:init-offer', { source: bobId });

    const relays = () => bob.state.events.filter(([event]) => event === '#rtcio:message');
    for (let n = 0; n < 10; n++) alice.emit('#rtcio:message', { target: bobId, data: { n } });
    await bob.until(() => relays().length >= 3, 'some relays before the drop');
    bob.dropConnection();
    for (let n = 10; n < 20; n++) alice.emit('#rtcio:message', { target: bobId, data: { n } });

    await bob.until(() => bob.state.sessions.length === 2, 'the session after the reconnect');
    const again = bob.state.sessions[1];
    assert.equal(again.recovered, true, `recovered: ${show(again)}`);
    assert.equal(again.id, bobId, 'the same peer id');
    assert.notEqual(bob.socket.id, bobId, 'on a new socket');
    assert.notEqual(again.resume, bob.state.sessions[0].resume, 'a new credential');
    await bob.until(() => relays().length >= 20, 'every relay');
    assert.deepEqual(relays().map(([, p]) => p.data.n), [...Array(20).keys()], 'each relay once, in order');
    for (const [, p] of relays()) assert.equal(p.source, alice.id);

    // Alice heard nothing of the drop: bob's first relay after it is her very next event.
    bob.socket.emit('#rtcio:message', { target: alice.id, data: { after: 'the drop' } });
    const next = await alice.expect('#rtcio:message', "bob's relay from the new socket");
    assert.deepEqual([next.source, next.data], [bobId, { after: 'the drop' }]);
    alice.assertDrained('after the recovery');
  });

  test('socket.disconnect() leaves at once, and the credential is spent', async (t) => {
    const c = clients(t, ['websocket']);
    const room = uniqueRoom('leave');
    const alice = await c.connect('alice');
    await joinEmpty(alice, room);
    const bob = recipeClient(t, 'user-bob');
    await bob.until(() => bob.state.sessions.length === 1, 'the first session');
    const bobId = bob.state.sessions[0].id;
    bob.socket.emit('join-room', { roomId: room, name: 'bob' });
    await alice.expect('user-connected');
    await alice.expect('#rtcio:init-offer');
    bob.socket.disconnect();
    await alice.expectExactly('#rtcio:peer-left', { id: bobId });
    await alice.expectExactly('user-disconnected', { id: bobId });
    bob.socket.connect();
    await bob.until(() => bob.state.sessions.length === 2, 'a session after connecting again');
    assert.equal(bob.state.sessions[1].recovered, false);
    assert.notEqual(bob.state.sessions[1].id, bobId);
  });
});
