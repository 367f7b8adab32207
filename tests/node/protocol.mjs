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
  const base = { forceNew: true, reconnection: false, timeout: WAIT_MS };
  if (transports) base.transports = transports;

  t.after(() => {
    for (const peer of made) peer.socket.disconnect();
    for (const peer of made) {
      if (!peer.id) continue;
      for (const m of peer.log) {
        const p = m.payload;
        if (p && typeof p === 'object') {
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
    /** A connected client for user `sub` (token claims `name`/`rooms` optional). */
    async connect(label, claims = {}) {
      const peer = open(label, { auth: { token: token({ sub: `user-${label}`, ...claims }) } });
      const { error } = await firstOutcome(peer);
      if (error) throw new Error(`${label}: connect_error ${error.message}`);
      peer.id = peer.socket.id;
      assert.ok(peer.id, `${label}: no socket id after connect`);
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
const joinEmpty = (peer, roomId, name = peer.label) => joinRoom(peer, roomId, [], name);

/**
 * `peer` joins `roomId` whose members are `members` (each `[peer, name]`, in joining order,
 * without cached media state); checks the whole exchange on every side.
 */
async function joinRoom(peer, roomId, members, name = peer.label) {
  peer.emit('join-room', { roomId, name });
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
  });
}
