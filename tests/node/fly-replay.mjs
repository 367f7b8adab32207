// Several machines behind a stand-in for Fly's proxy, with socket.io-client's default
// transports (HTTP long-polling first, then the WebSocket upgrade).
//
// The proxy sends every HTTP request and every WebSocket upgrade to a machine picked at
// random, as Fly's proxy may. When a machine answers with `fly-replay: instance=<id>`, the
// proxy drops that answer and sends the same request, with a `fly-replay-src` header, to
// that machine instead, as Fly documents (https://fly.io/docs/networking/dynamic-request-routing/).
//
//   BACKENDS="id1=http://127.0.0.1:P1,id2=http://127.0.0.1:P2" JWT_SECRET=... ROUNDS=50 \
//     node tests/node/fly-replay.mjs
//
// Each round two clients connect through the proxy, join a room, see each other and relay
// both ways. Prints `rounds ok N, replays R`; exits non-zero at the first failure.

import http from 'node:http';
import net from 'node:net';

import jwt from 'jsonwebtoken';
import { io } from 'socket.io-client';

const backends = new Map(
  (process.env.BACKENDS || '').split(',').filter(Boolean).map((entry) => {
    const [id, url] = entry.split('=');
    return [id, new URL(url)];
  }),
);
const ROUNDS = Number(process.env.ROUNDS || 50);
const WAIT_MS = 5000;
let replays = 0;

const pickAtRandom = () => [...backends.values()][Math.floor(Math.random() * backends.size)];

/** The machine a `fly-replay` answer names, if it is one. */
function replayTarget(headers) {
  const id = /instance=([^;,\s]+)/.exec(headers['fly-replay'] || '')?.[1];
  return id && backends.get(id);
}

/** Sends a buffered request to `target`; on `fly-replay`, once more to the named machine. */
function forward(req, body, target, replayed, res) {
  const headers = { ...req.headers, connection: 'close' };
  if (replayed) headers['fly-replay-src'] = 'instance=stand-in';
  const upstream = http.request(
    { host: target.hostname, port: target.port, method: req.method, path: req.url, headers },
    (answer) => {
      const next = !replayed && replayTarget(answer.headers);
      if (next) {
        replays += 1;
        answer.resume();
        return forward(req, body, next, true, res);
      }
      res.writeHead(answer.statusCode, answer.headers);
      answer.pipe(res);
    },
  );
  upstream.on('error', (e) => res.destroy(e));
  upstream.end(body);
}

/** Opens a WebSocket upgrade on `target`; on `fly-replay`, once more on the named machine. */
function upgrade(req, client, head, target, replayed) {
  const headers = { ...req.headers };
  if (replayed) headers['fly-replay-src'] = 'instance=stand-in';
  const upstream = http.request({
    host: target.hostname,
    port: target.port,
    method: req.method,
    path: req.url,
    headers,
  });
  upstream.on('upgrade', (answer, socket, upstreamHead) => {
    const lines = [`HTTP/1.1 ${answer.statusCode} ${answer.statusMessage}`];
    for (let i = 0; i < answer.rawHeaders.length; i += 2) {
      lines.push(`${answer.rawHeaders[i]}: ${answer.rawHeaders[i + 1]}`);
    }
    client.write(lines.join('\r\n') + '\r\n\r\n');
    if (upstreamHead.length) client.write(upstreamHead);
    if (head.length) socket.write(head);
    socket.pipe(client).pipe(socket);
    socket.on('error', () => client.destroy());
    client.on('error', () => socket.destroy());
  });
  upstream.on('response', (answer) => {
    const next = !replayed && replayTarget(answer.headers);
    answer.resume();
    if (next) {
      replays += 1;
      return upgrade(req, client, head, next, true);
    }
    client.end(`HTTP/1.1 ${answer.statusCode} ${answer.statusMessage}\r\n\r\n`);
  });
  upstream.on('error', () => client.destroy());
  upstream.end();
}

const proxy = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => forward(req, Buffer.concat(chunks), pickAtRandom(), false, res));
});
proxy.on('upgrade', (req, client, head) => upgrade(req, client, head, pickAtRandom(), false));
await new Promise((resolve) => proxy.listen(0, '127.0.0.1', resolve));
const url = `http://127.0.0.1:${proxy.address().port}`;

function within(promise, what) {
  return Promise.race([
    promise,
    new Promise((_, reject) => setTimeout(() => reject(new Error(`${what}: no answer`)), WAIT_MS)),
  ]);
}

function next(socket, event) {
  return new Promise((resolve) => socket.once(event, resolve));
}

async function client(name) {
  const token = jwt.sign({ sub: name }, process.env.JWT_SECRET, { expiresIn: 600 });
  const socket = io(url, { auth: { token }, reconnection: false, forceNew: true });
  socket.on('connect_error', (e) => socket.emit('failed', e));
  const session = await within(next(socket, 'session'), `${name} session`);
  return { socket, id: session.id };
}

async function round(n) {
  const room = `fly-${n}`;
  const alice = await client(`alice${n}`);
  const aliceJoined = next(alice.socket, 'join-ok');
  alice.socket.emit('join-room', { roomId: room, name: 'alice' });
  await within(aliceJoined, 'alice join-ok');
  const bob = await client(`bob${n}`);
  const bobJoined = next(bob.socket, 'join-ok');
  const offer = next(alice.socket, '#rtcio:init-offer');
  bob.socket.emit('join-room', { roomId: room, name: 'bob' });
  await within(bobJoined, 'bob join-ok');
  await within(offer, 'init-offer');
  const toBob = next(bob.socket, '#rtcio:message');
  alice.socket.emit('#rtcio:message', { target: bob.id, data: { n } });
  const got = await within(toBob, 'relay to bob');
  if (got.source !== alice.id || got.data.n !== n) throw new Error(`bad relay ${JSON.stringify(got)}`);
  const toAlice = next(alice.socket, '#rtcio:message');
  bob.socket.emit('#rtcio:message', { target: alice.id, data: { n } });
  await within(toAlice, 'relay to alice');
  // Both moved to WebSocket by now, or are still polling: either way through the proxy.
  alice.socket.disconnect();
  bob.socket.disconnect();
}

let ok = 0;
try {
  for (let n = 0; n < ROUNDS; n += 1) {
    await round(n);
    ok += 1;
  }
} catch (e) {
  console.log(`round ${ok} failed: ${e.message}`);
}
console.log(`rounds ok ${ok}, replays ${replays}`);
proxy.close();
process.exit(ok === ROUNDS ? 0 : 1);
