#!/usr/bin/env node
// End-to-end test of the browser demo (client-demo/) in real headless Chromium
// against a running server (started by the caller with --dev --demo-dir
// client-demo). Proves that real RTCPeerConnections negotiate through the
// server: video flows both ways, mute state and screen shares propagate, late
// joiners get the backfill, a signaling drop (TCP reset, no close frame) is
// recovered without touching the call (same peer id, same RTCPeerConnection,
// video never stops, missed events replayed), a closed WebSocket comes back as
// a fresh session that re-joins, leaves and closed tabs vanish,
// a room password locks a room (asked for, refused in words, re-sent on a
// rejoin, never leaked), and chat messages reach the other member by name.
//
//   SERVER_URL=http://127.0.0.1:3901 node tests/e2e/demo.mjs
//
// Env: SERVER_URL (required), CHROMIUM_PATH (default /usr/bin/chromium),
//      E2E_ARTIFACTS (default <repo>/artifacts/e2e), E2E_HEADFUL=1 to watch,
//      E2E_SERVER_LOG (the server's stdout log, set by run-in-netns.sh; its
//      stdout and .stderr files are searched for the room password).
// Last line is always "N passed, M failed"; exit code 0 only if M = 0.
import { chromium } from 'playwright-core';
import fs from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { CHROMIUM_ARGS } from './chromium-args.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const ARTIFACTS = path.resolve(ROOT, process.env.E2E_ARTIFACTS || 'artifacts/e2e');
const SERVER_URL = (process.env.SERVER_URL || '').replace(/\/+$/, '');
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const SERVER_LOG = process.env.E2E_SERVER_LOG || '';
const OVERALL_TIMEOUT_MS = 240_000;


const started = Date.now();
const elapsed = () => `${((Date.now() - started) / 1000).toFixed(1)}s`;
const log = (...args) => console.log(`[${elapsed()}]`, ...args);

const results = [];
const pages = new Map(); // label -> { label, context, page, id, alive, errors: [] }
let browser;

// ---------------------------------------------------------------------------
// helpers

function fail(message) {
  throw new Error(message);
}

async function check(name, fn, { requires = [] } = {}) {
  const missing = requires.filter((dep) => !results.find((r) => r.name === dep && r.ok));
  if (missing.length) {
    results.push({ name, ok: false, error: `skipped: needs "${missing.join('", "')}"` });
    log(`FAIL ${name}: skipped, prerequisite failed`);
    return false;
  }
  const t0 = Date.now();
  try {
    await fn();
    results.push({ name, ok: true });
    log(`PASS ${name} (${Date.now() - t0} ms)`);
    return true;
  } catch (err) {
    const message = (err && err.message ? err.message : String(err)).split('\n')[0];
    results.push({ name, ok: false, error: message });
    log(`FAIL ${name} (${Date.now() - t0} ms): ${message}`);
    await screenshotAll(`fail-${slug(name)}`);
    return false;
  }
}

const slug = (s) => s.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '').slice(0, 50);

async function screenshotAll(tag) {
  for (const p of pages.values()) {
    if (!p.alive) continue;
    const file = path.join(ARTIFACTS, `${tag}-${p.label}.png`);
    try {
      await p.page.screenshot({ path: file, timeout: 5000 });
    } catch (err) {
      log(`  (screenshot ${file} failed: ${err.message.split('\n')[0]})`);
    }
  }
}

/**
 * A TCP proxy in front of the server, for pages that load the demo through it
 * (everything of theirs, the signaling WebSocket included, then goes through it).
 * cut(ms) is a network failure: every connection gets a TCP reset both ways (no
 * WebSocket close frame, so the server keeps the session for recovery) and new
 * connections are reset at once for `ms`.
 */
async function startProxy() {
  const target = new URL(SERVER_URL);
  const conns = new Set();
  let downUntil = 0;
  const server = net.createServer((client) => {
    if (Date.now() < downUntil) {
      client.on('error', () => {});
      client.resetAndDestroy();
      return;
    }
    const upstream = net.connect(Number(target.port), target.hostname);
    const pair = { client, upstream };
    conns.add(pair);
    client.pipe(upstream);
    upstream.pipe(client);
    // A reset on one side is passed on as a reset; an orderly end (FIN) as an end (pipe).
    client.on('error', () => upstream.resetAndDestroy());
    upstream.on('error', () => client.resetAndDestroy());
    const forget = () => {
      if (client.destroyed && upstream.destroyed) conns.delete(pair);
    };
    client.on('close', forget);
    upstream.on('close', forget);
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    get open() { return conns.size; },
    /** Resets every connection and refuses new ones for `ms`; resolves when it lets them through again. */
    async cut(ms) {
      downUntil = Date.now() + ms;
      const n = conns.size;
      for (const { client, upstream } of conns) {
        client.resetAndDestroy();
        upstream.resetAndDestroy();
      }
      conns.clear();
      log(`  proxy: reset ${n} connection(s), refusing new ones for ${ms} ms`);
      await new Promise((r) => setTimeout(r, ms));
    },
    close: () => new Promise((r) => server.close(r)),
  };
}

async function openPage(label, query = '', { routeSignaling = false, via = null } = {}) {
  const context = await browser.newContext({
    viewport: { width: 1280, height: 800 },
    permissions: ['camera', 'microphone'],
  });
  const p = { label, context, page: null, id: null, alive: true, errors: [], console: [], sockets: [], holdSockets: false };
  if (routeSignaling) {
    // Pass the Socket.IO WebSocket through Playwright so the test can cut it.
    // While holdSockets is set, new upgrade attempts fail at once (network down).
    await context.routeWebSocket(/\/socket\.io\//, (route) => {
      if (p.holdSockets) {
        route.close({ code: 4001, reason: 'e2e: network still down' }).catch(() => {});
        return;
      }
      route.connectToServer(); // messages and closes are forwarded both ways
      p.sockets.push(route);
    });
    // Long-polling too: otherwise a reconnect during the "outage" gets through over
    // HTTP, cannot upgrade, and stays on polling (a later page close then goes
    // unnoticed by the server until its ping timeout).
    await context.route(/\/socket\.io\//, (route) => {
      if (p.holdSockets) route.abort('internetdisconnected').catch(() => {});
      else route.continue().catch(() => {});
    });
  }
  const page = await context.newPage();
  p.page = page;
  page.on('pageerror', (err) => p.errors.push(`pageerror: ${err.message}`));
  page.on('console', (msg) => {
    p.console.push(msg.text());
    if (msg.type() === 'error') p.errors.push(`console: ${msg.text()}`);
  });
  pages.set(label, p);
  await page.goto(`${via ? via.url : SERVER_URL}/${query}`, { waitUntil: 'load', timeout: 15_000 });
  // Set once the dev-token probe has settled (and before any ?room=&name= auto-join).
  await waitFor(p, 'page ready', () => document.body.dataset.ready === 'true');
  return p;
}

async function closePage(p) {
  p.alive = false;
  await p.context.close();
}

const tid = (id) => `[data-testid="${id}"]`;
const peerTile = (id) => `.tile.remote[data-peer-id="${id}"]`;
const screenTile = (id) => `.tile.screen[data-screen-of="${id}"]`;

async function waitFor(p, what, fn, arg, timeout = 15_000) {
  const t0 = Date.now();
  try {
    await p.page.waitForFunction(fn, arg, { timeout, polling: 100 });
    const took = Date.now() - t0;
    if (took > 2_000) log(`  slow: ${p.label} waited ${took} ms for ${what}`);
  } catch (err) {
    if (!p.alive) throw err;
    const status = await p.page
      .evaluate(() => ({
        status: document.querySelector('[data-testid="status-text"]')?.textContent,
        errors: [...document.querySelectorAll('[data-testid="error-item"] .message')].map((e) => e.textContent),
        peers: window.__rtcDemo?.peers,
      }))
      .catch(() => ({}));
    fail(`${p.label}: timed out after ${timeout} ms waiting for ${what}; page state ${JSON.stringify(status)}`);
  }
}

async function waitJoined(p) {
  await waitFor(
    p,
    'joined + connected',
    () => document.body.dataset.joined === 'true' &&
      document.querySelector('[data-testid="status"]')?.dataset.state === 'connected' &&
      Boolean(window.__rtcDemo?.peerId),
  );
  p.id = await p.page.evaluate(() => window.__rtcDemo.peerId);
  if (!p.id) fail(`${p.label}: no peer id after joining`);
}

/**
 * Closes p's signaling WebSocket from outside the page (peer connections are
 * untouched), waits for the page to show "reconnecting", runs `whileDown`, then
 * lets it reconnect. Needs openPage(..., { routeSignaling: true }). The route
 * closes both ends with a close frame, so the server takes it as the page leaving
 * (no recovery): this is the fresh-session path. For a drop without a close frame
 * use a proxy (startProxy). (context.setOffline does not drop WebSockets inside a
 * loopback-only network namespace, hence the route.)
 */
async function cutSignaling(p, whileDown = async () => {}) {
  p.holdSockets = true;
  try {
    if (!p.sockets.length) fail(`${p.label} has no routed signaling WebSocket to cut`);
    for (const route of p.sockets.splice(0)) {
      await route.close({ code: 4000, reason: 'e2e: simulated network drop' }).catch(() => {});
    }
    await waitFor(p, 'status "reconnecting"', () => document.querySelector('[data-testid="status"]')?.dataset.state === 'reconnecting');
    await whileDown();
  } finally {
    p.holdSockets = false;
  }
}

/** Waits until p is back in a fresh session, joined, under a peer id other than `oldId`; updates p.id. */
async function waitRejoined(p, oldId) {
  await waitFor(p, 'a fresh session (new peer id) after reconnecting', (old) => {
    const d = window.__rtcDemo;
    return d.connection === 'connected' && d.peerId && d.peerId !== old && d.joined;
  }, oldId);
  p.id = await p.page.evaluate(() => window.__rtcDemo.peerId);
  // socket.io connects over long-polling, then upgrades to a (routed) WebSocket.
  const t0 = Date.now();
  while (!p.sockets.length && Date.now() - t0 < 5_000) await new Promise((r) => setTimeout(r, 100));
  log(`  ${p.label} is back as ${p.id}, ${p.sockets.length ? 'upgraded to a WebSocket' : 'still on long-polling after 5 s'}`);
}

/** What the page knows about its call: ids, session counts, and per remote peer its RTCPeerConnection. */
async function callState(p) {
  return p.page.evaluate(() => {
    const d = window.__rtcDemo;
    return {
      peerId: d.peerId,
      socketId: d.socketId,
      connection: d.connection,
      joined: d.joined,
      sessions: { ...d.sessions },
      peerConnections: d.peerConnections,
      peers: d.peers.map((x) => ({
        id: x.id, link: x.link, offersSent: x.offersSent, offersReceived: x.offersReceived, connectionState: x.connectionState,
      })),
      tiles: [...document.querySelectorAll('.tile.remote')].map((e) => e.dataset.peerId),
    };
  });
}

/**
 * Samples the <video> of `selector` every 100 ms until stopVideoSampler: currentTime,
 * decoded frames, and whether it is still the same element with the same MediaStream.
 */
async function startVideoSampler(p, selector) {
  await p.page.evaluate((sel) => {
    const video = document.querySelector(sel);
    if (!video) throw new Error(`no ${sel}`);
    const s = { video, stream: video.srcObject, samples: [] };
    const sample = () => {
      const v = document.querySelector(sel);
      s.samples.push({
        t: performance.now(),
        ct: v ? v.currentTime : -1,
        frames: v ? v.getVideoPlaybackQuality().totalVideoFrames : -1,
        same: v === s.video && v.srcObject === s.stream,
      });
    };
    sample();
    s.timer = setInterval(sample, 100);
    window.__e2eSampler = s;
  }, selector);
}

/** Stops the sampler; returns the window it saw, its longest stall and the frames decoded meanwhile. */
async function stopVideoSampler(p) {
  return p.page.evaluate(() => {
    const s = window.__e2eSampler;
    clearInterval(s.timer);
    window.__e2eSampler = null;
    const xs = s.samples;
    let longestStallMs = 0;
    let lastAdvance = xs[0].t;
    for (let i = 1; i < xs.length; i++) {
      if (xs[i].ct > xs[i - 1].ct) lastAdvance = xs[i].t;
      longestStallMs = Math.max(longestStallMs, xs[i].t - lastAdvance);
    }
    // Also the widest gap between two samples: a sampler that itself stalled proves nothing.
    let widestGapMs = 0;
    for (let i = 1; i < xs.length; i++) widestGapMs = Math.max(widestGapMs, xs[i].t - xs[i - 1].t);
    const first = xs[0];
    const last = xs[xs.length - 1];
    return {
      samples: xs.length,
      spanMs: Math.round(last.t - first.t),
      longestStallMs: Math.round(longestStallMs),
      widestGapMs: Math.round(widestGapMs),
      played: +(last.ct - first.ct).toFixed(2),
      frames: last.frames - first.frames,
      sameElementAndStream: xs.every((x) => x.same),
    };
  });
}

/** Sends a chat message from p through the panel and waits until p shows it as its own. */
async function sendChat(p, text) {
  await p.page.locator(tid('chat-input')).fill(text);
  await p.page.locator(tid('chat-input')).press('Enter');
  await waitFor(p, 'own chat message shown', (t) => window.__rtcDemo.chat.some((m) => m.mine && m.text === t), text);
}

/** Waits until p's chat shows `text` from peer `fromId`, then fails unless it shows it exactly once. */
async function expectChatOnce(p, fromId, text, what) {
  await waitFor(p, what, ([id, t]) => window.__rtcDemo.chat.some((m) => !m.mine && m.id === id && m.text === t), [fromId, text]);
  await new Promise((r) => setTimeout(r, 300)); // room for a duplicate to show up
  const n = await p.page.evaluate(([id, t]) => window.__rtcDemo.chat.filter((m) => m.id === id && m.text === t).length, [fromId, text]);
  if (n !== 1) fail(`${p.label} shows ${what} ${n} times`);
}

async function joinViaForm(p, roomId, name) {
  await p.page.locator(tid('room-input')).fill(roomId);
  await p.page.locator(tid('name-input')).fill(name);
  await p.page.locator(tid('join-button')).click();
  await waitJoined(p);
}

/** The <video> matching selector renders frames (videoWidth > 0) and its currentTime advances. */
async function expectPlaying(p, selector, what, timeout = 15_000) {
  await waitFor(
    p,
    `${what} to show video frames`,
    (sel) => {
      const v = document.querySelector(sel);
      return Boolean(v && v.videoWidth > 0 && v.readyState >= 2);
    },
    selector,
    timeout,
  );
  const t0 = await p.page.$eval(selector, (v) => v.currentTime);
  await waitFor(
    p,
    `${what} to keep playing (currentTime past ${t0.toFixed(2)})`,
    ([sel, start]) => {
      const v = document.querySelector(sel);
      return Boolean(v && v.currentTime > start + 0.25);
    },
    [selector, t0],
    8_000,
  );
}

async function expectGone(p, selector, what, timeout = 5_000) {
  await waitFor(p, `${what} to disappear`, (sel) => !document.querySelector(sel), selector, timeout);
}

async function expectAttr(p, selector, attr, value, what, timeout = 5_000) {
  await waitFor(
    p,
    `${what} (${selector} ${attr}=${value})`,
    ([sel, a, v]) => document.querySelector(sel)?.getAttribute(a) === v,
    [selector, attr, value],
    timeout,
  );
}

async function expectName(p, peerId, name) {
  const label = (await p.page.locator(`${peerTile(peerId)} [data-testid="peer-name"]`).textContent({ timeout: 5_000 })) ?? '';
  if (label.trim() !== name) fail(`${p.label}: tile of ${peerId} is labelled "${label}", expected "${name}"`);
}

/** Some shown error's text matches `re`. */
async function waitForError(p, re) {
  await waitFor(
    p,
    `an error matching ${re}`,
    ([source, flags]) => {
      const pattern = new RegExp(source, flags);
      return [...document.querySelectorAll('[data-testid="error-item"]')].some((e) => pattern.test(e.textContent));
    },
    [re.source, re.flags],
  );
}

async function errorTexts(p) {
  return p.page.$$eval('[data-testid="error-item"] .message', (els) => els.map((e) => e.textContent));
}

// ---------------------------------------------------------------------------

async function main() {
  if (!SERVER_URL) {
    console.error('SERVER_URL is not set (e.g. SERVER_URL=http://127.0.0.1:3901)');
    console.log('0 passed, 1 failed');
    process.exit(2);
  }
  await fs.mkdir(ARTIFACTS, { recursive: true });
  // Screenshots of earlier runs would be mistaken for this one's.
  for (const f of await fs.readdir(ARTIFACTS)) {
    if (f.endsWith('.png')) await fs.rm(path.join(ARTIFACTS, f), { force: true });
  }
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: !process.env.E2E_HEADFUL,
    args: CHROMIUM_ARGS,
  });
  log(`chromium ${browser.version()}, server ${SERVER_URL}, screenshots -> ${path.relative(ROOT, ARTIFACTS)}/`);

  let roomId = '';
  let A, B, C, D;
  // B loads the demo through this proxy, so the test can cut B's signaling like a network would.
  const proxyB = await startProxy();
  let lockedRoom = '';
  let E, F;
  // Distinctive, so any leak (URL, storage, console, server log) is unmistakable.
  const PASSWORD = `e2e-Lock-${Math.random().toString(36).slice(2, 10)}-pw`;

  const LOADS = 'page loads with a random room id and dev tokens available';
  const TWO = 'two pages join one room and play each other\'s video';

  await check(LOADS, async () => {
    A = await openPage('A');
    roomId = await A.page.locator(tid('room-input')).inputValue();
    if (!/^[a-z2-7]{16}$/.test(roomId)) fail(`pre-filled room id "${roomId}" is not 16 base32 chars`);
    B = await openPage('B', `?room=${roomId}`, { via: proxyB });
    const prefilled = await B.page.locator(tid('room-input')).inputValue();
    if (prefilled !== roomId) fail(`?room= did not pre-fill the room input (got "${prefilled}")`);
    const status = await A.page.locator(tid('status-text')).textContent();
    if (!/not connected/.test(status)) fail(`initial status is "${status}"`);
    const mode = await A.page.evaluate(() => window.__rtcDemo.devTokens);
    if (mode !== true) fail(`page did not detect the dev token endpoint (devTokens=${mode})`);
  });

  await check(TWO, async () => {
    // With TURN configured (run-in-netns.sh), the page sends its token as a bearer token
    // and gets a TURN credential minted for its user.
    const [config] = await Promise.all([
      A.page.waitForResponse((r) => new URL(r.url()).pathname === '/client-config'),
      joinViaForm(A, roomId, 'Alice'),
    ]);
    const auth = await config.request().headerValue('authorization');
    if (!/^Bearer \S+/.test(auth ?? '')) fail(`/client-config was fetched without a bearer token (${auth})`);
    if (config.status() !== 200) fail(`/client-config answered HTTP ${config.status()}`);
    const turn = (await config.json()).iceServers?.find((s) => s.credential);
    if (!/^\d+:dev-/.test(turn?.username ?? '')) fail(`no TURN credential for the dev user: ${JSON.stringify(turn)}`);
    const url = A.page.url();
    if (!url.includes(`room=${roomId}`)) fail(`A's URL ${url} lacks ?room=${roomId}`);
    const invite = await A.page.locator(tid('invite-link')).inputValue();
    if (!invite.includes(`room=${roomId}`)) fail(`invite link "${invite}" lacks the room`);
    await joinViaForm(B, roomId, 'Bob');
    for (const p of [A, B]) {
      const st = await callState(p);
      // A fresh session's peer id is its first socket's Socket.IO id (PROTOCOL.md, Ids).
      if (st.peerId !== st.socketId) fail(`${p.label}: fresh session's peer id ${st.peerId} is not its socket id ${st.socketId}`);
      if (st.sessions.fresh !== 1 || st.sessions.recovered !== 0) fail(`${p.label} had sessions ${JSON.stringify(st.sessions)}`);
    }
    await expectPlaying(A, `${peerTile(B.id)} video`, "B's camera on A");
    await expectPlaying(B, `${peerTile(A.id)} video`, "A's camera on B");
    await expectPlaying(A, tid('local-video'), "A's own preview");
    await expectName(A, B.id, 'Bob');
    await expectName(B, A.id, 'Alice');
    await screenshotAll('01-two-peers');
  }, { requires: [LOADS] });

  // B's signaling connection dies without a close frame (TCP reset) for 3 s and comes
  // back: the server kept B's session, so B recovers it and nobody notices.
  const RECOVER = 'a 3 s signaling cut without a close frame: B recovers its session, the call is untouched and video never stops';
  await check(RECOVER, async () => {
    const [a0, b0] = [await callState(A), await callState(B)];
    const aPc = a0.peers.find((x) => x.id === B.id);
    const bPc = b0.peers.find((x) => x.id === A.id);
    if (!aPc?.link || !bPc?.link) fail(`no peer connection between A and B before the cut: ${JSON.stringify([a0, b0])}`);
    await startVideoSampler(A, `${peerTile(B.id)} video`);
    await startVideoSampler(B, `${peerTile(A.id)} video`);
    await new Promise((r) => setTimeout(r, 1_000));

    const back = proxyB.cut(3_000);
    await waitFor(B, 'status "reconnecting"', () => document.querySelector('[data-testid="status"]')?.dataset.state === 'reconnecting', undefined, 2_500);
    // While B is away: A mutes (an event for B the server must keep and replay), and
    // B mutes (B's media-state must wait for the recovered connection).
    await A.page.locator(tid('mic-toggle')).click();
    await B.page.locator(tid('mic-toggle')).click();
    const missed = `sent while Bob was away ${Date.now().toString(36)}`;
    await sendChat(A, missed);
    await screenshotAll('04a-recovery-cut');
    await back;
    log(`  proxy: letting B reconnect`);

    await waitFor(B, 'its session recovered', () => {
      const d = window.__rtcDemo;
      return d.connection === 'connected' && d.sessions.recovered === 1;
    }, undefined, 20_000);
    const b1 = await callState(B);
    if (b1.peerId !== b0.peerId) fail(`B came back as ${b1.peerId}, was ${b0.peerId}`);
    if (b1.socketId === b0.socketId) fail(`B's socket id did not change (${b1.socketId}): was the connection really cut?`);
    if (b1.sessions.fresh !== 1) fail(`B started a fresh session on recovery: ${JSON.stringify(b1.sessions)}`);
    if (!b1.joined) fail('B is no longer joined');
    // The missed event and B's held-back one both arrive.
    await expectAttr(B, peerTile(A.id), 'data-mic', 'off', "A's mute while B was away, replayed to B");
    await expectAttr(A, peerTile(B.id), 'data-mic', 'off', "B's mute while it was away, delivered to A");
    await expectChatOnce(B, A.id, missed, "A's chat message from while B was away");
    await A.page.locator(tid('mic-toggle')).click();
    await B.page.locator(tid('mic-toggle')).click();
    await expectAttr(B, peerTile(A.id), 'data-mic', 'on', "A's unmute after the recovery, on B");
    await expectAttr(A, peerTile(B.id), 'data-mic', 'on', "B's unmute after the recovery, on A");
    await new Promise((r) => setTimeout(r, 1_000));
    const [va, vb] = [await stopVideoSampler(A), await stopVideoSampler(B)];
    log(`  B's video on A across the cut: ${JSON.stringify(va)}`);
    log(`  A's video on B across the cut: ${JSON.stringify(vb)}`);

    const [a1, b2] = [await callState(A), await callState(B)];
    const problems = [];
    for (const [who, before, after, other] of [['A', a0, a1, B.id], ['B', b0, b2, A.id]]) {
      if (after.tiles.join() !== before.tiles.join()) problems.push(`${who}'s tiles were ${before.tiles}, now ${after.tiles}`);
      if (after.peerConnections !== before.peerConnections) {
        problems.push(`${who} made ${after.peerConnections - before.peerConnections} new RTCPeerConnection(s)`);
      }
      const x0 = before.peers.find((x) => x.id === other);
      const x1 = after.peers.find((x) => x.id === other);
      if (!x1 || x1.link !== x0.link) problems.push(`${who}'s connection to ${other} was replaced (link ${x0.link} -> ${x1?.link})`);
      else if (x1.offersSent !== x0.offersSent || x1.offersReceived !== x0.offersReceived) {
        problems.push(`${who} renegotiated with ${other}: offers sent ${x0.offersSent} -> ${x1.offersSent}, received ${x0.offersReceived} -> ${x1.offersReceived}`);
      }
      if (x1 && x1.connectionState !== 'connected') problems.push(`${who}'s connection to ${other} is ${x1.connectionState}`);
      if (after.peers.length !== before.peers.length) problems.push(`${who} tracks ${after.peers.length} peers, was ${before.peers.length}`);
    }
    for (const [who, v] of [['B on A', va], ['A on B', vb]]) {
      if (!v.sameElementAndStream) problems.push(`${who}: the video element or its stream was replaced`);
      if (v.widestGapMs > 1_000) problems.push(`${who}: the sampler itself stalled (${v.widestGapMs} ms)`);
      if (v.longestStallMs > 1_000) problems.push(`${who}: video stalled for ${v.longestStallMs} ms`);
      if (v.played < (v.spanMs / 1000) * 0.8) problems.push(`${who}: played ${v.played} s in ${v.spanMs} ms`);
      if (v.frames < (v.spanMs / 1000) * 5) problems.push(`${who}: only ${v.frames} frames in ${v.spanMs} ms`);
    }
    if (problems.length) fail(problems.join(' | '));
    await screenshotAll('04b-recovered');
  }, { requires: [TWO] });

  await check('mic toggle on A shows a mute badge on B', async () => {
    await A.page.locator(tid('mic-toggle')).click();
    await expectAttr(A, tid('mic-toggle'), 'data-state', 'off', 'A mic button off');
    const trackEnabled = await A.page.evaluate(
      () => document.getElementById('local-video').srcObject.getAudioTracks().map((t) => t.enabled),
    );
    if (trackEnabled.length !== 1 || trackEnabled[0] !== false) fail(`A's audio track not disabled: ${trackEnabled}`);
    await expectAttr(B, peerTile(A.id), 'data-mic', 'off', "A's mic badge on B");
    if (!(await B.page.locator(`${peerTile(A.id)} [data-testid="mic-badge"]`).isVisible())) {
      fail("A's mic badge is not visible on B");
    }
  }, { requires: [TWO] });

  await check('camera toggle on B shows on A, and back on', async () => {
    await B.page.locator(tid('cam-toggle')).click();
    await expectAttr(A, peerTile(B.id), 'data-cam', 'off', "B's cam badge on A");
    const enabled = await B.page.evaluate(
      () => document.getElementById('local-video').srcObject.getVideoTracks().map((t) => t.enabled),
    );
    if (enabled[0] !== false) fail(`B's video track not disabled: ${enabled}`);
    await B.page.locator(tid('cam-toggle')).click();
    await expectAttr(A, peerTile(B.id), 'data-cam', 'on', "B's cam back on at A");
  }, { requires: [TWO] });

  const LATE = 'late joiner C sees A muted and plays video from A and B (and they from C)';
  await check(LATE, async () => {
    // Auto-join through a shared link with ?room=&name=.
    C = await openPage('C', `?room=${roomId}&name=Carol`);
    await waitJoined(C);
    await expectAttr(C, peerTile(A.id), 'data-mic', 'off', "A's mute state backfilled to C");
    await expectAttr(C, peerTile(A.id), 'data-cam', 'on', "A's camera state on C");
    await expectName(C, A.id, 'Alice');
    await expectName(C, B.id, 'Bob');
    await expectName(A, C.id, 'Carol');
    await expectPlaying(C, `${peerTile(A.id)} video`, "A's camera on C");
    await expectPlaying(C, `${peerTile(B.id)} video`, "B's camera on C");
    await expectPlaying(A, `${peerTile(C.id)} video`, "C's camera on A");
    await expectPlaying(B, `${peerTile(C.id)} video`, "C's camera on B");
    await screenshotAll('02-three-peers');
  }, { requires: [TWO] });

  const SHARE = 'screen share from A appears on B and C';
  await check(SHARE, async () => {
    await A.page.locator(tid('share-toggle')).click();
    await expectAttr(A, tid('share-toggle'), 'data-state', 'on', 'A share button on');
    await expectPlaying(A, `${tid('local-screen')} video`, "A's own screen preview");
    await expectPlaying(B, `${screenTile(A.id)} video`, "A's screen on B");
    await expectPlaying(C, `${screenTile(A.id)} video`, "A's screen on C");
    const kinds = await B.page.$eval(`${screenTile(A.id)} video`, (v) => v.srcObject.getTracks().map((t) => t.kind));
    if (kinds.join() !== 'video') fail(`screen stream on B has tracks ${kinds}`);
    await screenshotAll('03-screen-share');
  }, { requires: [LATE] });

  await check('stopping the share removes the screen tile on B and C; cameras keep playing', async () => {
    await A.page.locator(tid('share-toggle')).click();
    await expectAttr(A, tid('share-toggle'), 'data-state', 'off', 'A share button off');
    await expectGone(B, screenTile(A.id), "A's screen tile on B");
    await expectGone(C, screenTile(A.id), "A's screen tile on C");
    await expectGone(A, tid('local-screen'), "A's own screen preview");
    await expectPlaying(B, `${peerTile(A.id)} video`, "A's camera on B after renegotiation");
    await expectPlaying(C, `${peerTile(A.id)} video`, "A's camera on C after renegotiation");
  }, { requires: [SHARE] });

  await check('A and B start sharing at the same instant (offer glare): each sees the other\'s screen', async () => {
    // Both renegotiate at once, so offers cross; perfect negotiation must settle it.
    await Promise.all([A.page.locator(tid('share-toggle')).click(), B.page.locator(tid('share-toggle')).click()]);
    await expectPlaying(B, `${screenTile(A.id)} video`, "A's screen on B");
    await expectPlaying(A, `${screenTile(B.id)} video`, "B's screen on A");
    await expectPlaying(C, `${screenTile(A.id)} video`, "A's screen on C");
    await expectPlaying(C, `${screenTile(B.id)} video`, "B's screen on C");
    await expectPlaying(A, `${peerTile(B.id)} video`, "B's camera on A during both shares");
    await screenshotAll('03b-two-shares');
    const collisions = async (p, other) =>
      p.page.evaluate((id) => window.__rtcDemo.peers.find((x) => x.id === id)?.offerCollisions ?? 0, other.id);
    log(`  offer collisions resolved between A and B: A saw ${await collisions(A, B)}, B saw ${await collisions(B, A)}`);
    await Promise.all([A.page.locator(tid('share-toggle')).click(), B.page.locator(tid('share-toggle')).click()]);
    for (const [p, owner] of [[A, B], [B, A], [C, A], [C, B]]) {
      await expectGone(p, screenTile(owner.id), `${owner.label}'s screen tile on ${p.label}`);
    }
  }, { requires: [LATE] });

  await check('no errors shown and no page errors during the call', async () => {
    const problems = [];
    for (const p of [A, B, C]) {
      if (!p) continue;
      for (const e of await errorTexts(p)) {
        // B's own signaling cut above is reported on purpose.
        if (p === B && /^Lost the signaling connection|^Cannot reach the signaling server/.test(e)) continue;
        problems.push(`${p.label} shows error: ${e}`);
      }
      for (const e of p.errors) if (e.startsWith('pageerror')) problems.push(`${p.label} ${e}`);
    }
    if (problems.length) fail(problems.join(' | '));
  }, { requires: [TWO] });

  const RECONNECT = 'after a second signaling drop B recovers again: same peer id, A and C notice nothing, media keeps playing';
  await check(RECONNECT, async () => {
    // A second recovery: B presents the credential its first recovery gave it, and
    // counts on from there (the count does not restart on a recovered session).
    const before = { A: await callState(A), B: await callState(B), C: await callState(C) };
    const back = proxyB.cut(3_000);
    // B must show "reconnecting", then come back by itself.
    await waitFor(B, 'status "reconnecting"', () => document.querySelector('[data-testid="status"]')?.dataset.state === 'reconnecting', undefined, 2_500);
    const missed = `Bob, you missed this ${Date.now().toString(36)}`;
    await sendChat(C, missed);
    await B.page.screenshot({ path: path.join(ARTIFACTS, '04-reconnecting-B.png') });
    await back;
    await waitFor(B, 'its session recovered a second time', () => {
      const d = window.__rtcDemo;
      return d.connection === 'connected' && d.sessions.recovered === 2;
    }, undefined, 20_000);
    const errs = await errorTexts(B);
    if (!errs.some((e) => /Lost the signaling connection/.test(e))) {
      fail(`B did not report the lost signaling connection (errors: ${JSON.stringify(errs)})`);
    }
    const after = { A: await callState(A), B: await callState(B), C: await callState(C) };
    if (after.B.peerId !== before.B.peerId) fail(`B came back as ${after.B.peerId}, was ${before.B.peerId}`);
    if (after.B.sessions.fresh !== 1) fail(`B started a fresh session: ${JSON.stringify(after.B.sessions)}`);
    for (const who of ['A', 'B', 'C']) {
      const [x0, x1] = [before[who], after[who]];
      if (x1.tiles.join() !== x0.tiles.join()) fail(`${who}'s tiles were ${x0.tiles}, now ${x1.tiles}`);
      if (x1.peerConnections !== x0.peerConnections) fail(`${who} made a new RTCPeerConnection (${x0.peerConnections} -> ${x1.peerConnections})`);
      const links = (st) => JSON.stringify(st.peers.map((x) => [x.id, x.link, x.offersSent, x.offersReceived]).sort());
      if (links(x1) !== links(x0)) fail(`${who}'s peer connections changed: ${links(x0)} -> ${links(x1)}`);
    }
    await expectPlaying(A, `${peerTile(B.id)} video`, "B's camera on A after B recovered");
    await expectPlaying(C, `${peerTile(B.id)} video`, "B's camera on C after B recovered");
    await expectPlaying(B, `${peerTile(A.id)} video`, "A's camera on B after recovering");
    await expectPlaying(B, `${peerTile(C.id)} video`, "C's camera on B after recovering");
    await expectAttr(B, peerTile(A.id), 'data-mic', 'off', "A's mute state still shown on B");
    await expectChatOnce(B, C.id, missed, "C's chat message from while B was away");
    await expectChatOnce(A, C.id, missed, "C's chat message");
    // The recovered connection carries new events both ways.
    const reply = `Back, thanks ${Date.now().toString(36)}`;
    await sendChat(B, reply);
    await expectChatOnce(A, B.id, reply, "B's chat message after recovering");
    await expectChatOnce(C, B.id, reply, "B's chat message after recovering");
    await B.page.locator(tid('cam-toggle')).click();
    await expectAttr(A, peerTile(B.id), 'data-cam', 'off', "B's cam off on A after recovering");
    await expectAttr(C, peerTile(B.id), 'data-cam', 'off', "B's cam off on C after recovering");
    await B.page.locator(tid('cam-toggle')).click();
    await expectAttr(A, peerTile(B.id), 'data-cam', 'on', "B's cam back on at A");
    const tiles = await B.page.$$eval('.tile.remote', (els) => els.map((e) => e.dataset.peerId).sort());
    if (tiles.join() !== [A.id, C.id].sort().join()) fail(`B has tiles ${tiles}, expected A and C`);
    await screenshotAll('04-after-reconnect');
  }, { requires: [LATE] });

  await check('Leave button: C leaves and its tile disappears on A and B within 5 s', async () => {
    await C.page.locator(tid('leave-button')).click();
    await expectGone(A, peerTile(C.id), "C's tile on A");
    await expectGone(B, peerTile(C.id), "C's tile on B");
    await waitFor(C, 'lobby after leaving', () => document.body.dataset.view === 'lobby');
    const pcs = await C.page.evaluate(() => window.__rtcDemo.peers.length);
    if (pcs !== 0) fail(`C still tracks ${pcs} peers after leaving`);
  }, { requires: [LATE] });

  await check('closing B\'s page (a departure, not a drop) removes its tile on A within 5 s', async () => {
    await screenshotAll('05-before-close');
    const bId = B.id;
    await closePage(B);
    await expectGone(A, peerTile(bId), "B's tile on A");
    await waitFor(A, 'no remote tiles left', () => document.querySelectorAll('.tile.remote').length === 0);
  }, { requires: [TWO] });
  await proxyB.close();

  await check('a bad pasted token is refused and shown as "invalid token"', async () => {
    D = await openPage('D', `?room=${roomId}`);
    await D.page.locator('#token-summary').click();
    await D.page.locator(tid('token-input')).fill('not.a-real.jwt');
    await D.page.locator(tid('name-input')).fill('Dave');
    await D.page.locator(tid('join-button')).click();
    await waitForError(D, /invalid token/);
    await expectAttr(D, tid('status'), 'data-state', 'disconnected', 'status disconnected after refusal');
    await waitFor(D, 'back in the lobby', () => document.body.dataset.view === 'lobby');
  });

  await check('an over-long room id gets a visible join-error', async () => {
    if (!D) fail('page D missing');
    await D.page.locator(tid('token-input')).fill('');
    await D.page.locator(tid('room-input')).evaluate((el) => {
      el.removeAttribute('maxlength');
      el.value = 'x'.repeat(129);
    });
    await D.page.locator(tid('join-button')).click();
    await waitForError(D, /Could not join room/);
    const errs = await errorTexts(D);
    log(`  D shows: ${JSON.stringify(errs[0])}`);
    await screenshotAll('06-errors');
  });

  // ---- room password and chat (pages E = Erin, the room's creator, and F = Frank)

  const LOCK_SET = 'a room created with a password shows the lock badge (an open room does not)';
  const LOCK_ASK = 'a joiner without the password is asked for it and stays out of the room';
  const LOCK_WRONG = 'a wrong password is refused in words';
  const LOCK_OPEN = 'the right password lets F in and E and F play each other\'s video';
  const CHAT = 'chat: E\'s message shows on F with E\'s name, F\'s reply shows on E';

  await check(LOCK_SET, async () => {
    E = await openPage('E');
    lockedRoom = await E.page.locator(tid('room-input')).inputValue();
    const label = await E.page.locator('label[for="password-input"]').textContent();
    if (label.trim() !== 'Room password (optional)') fail(`password field is labelled "${label}"`);
    const type = await E.page.locator(tid('password-input')).getAttribute('type');
    if (type !== 'password') fail(`password field has type "${type}"`);
    await E.page.locator(tid('password-input')).fill(PASSWORD);
    await joinViaForm(E, lockedRoom, 'Erin');
    await waitFor(E, 'the lock badge', () => {
      const badge = document.querySelector('[data-testid="room-lock"]');
      return Boolean(badge && !badge.hidden && badge.offsetWidth > 0) && window.__rtcDemo.locked === true;
    });
    if (A?.alive && (await A.page.locator(tid('room-lock')).isVisible())) fail('A shows a lock badge in an open room');
  });

  await check(LOCK_ASK, async () => {
    F = await openPage('F', `?room=${lockedRoom}`, { routeSignaling: true });
    // Count camera requests: a room that turns us away must not turn the camera on.
    await F.page.evaluate(() => {
      const md = navigator.mediaDevices;
      const getUserMedia = md.getUserMedia.bind(md);
      window.__e2eCameraRequests = 0;
      md.getUserMedia = (constraints) => {
        window.__e2eCameraRequests += 1;
        return getUserMedia(constraints);
      };
    });
    await F.page.locator(tid('name-input')).fill('Frank');
    await F.page.locator(tid('join-button')).click();
    await waitForError(F, /This room is locked\. Enter its password\./);
    await waitFor(F, 'the lobby again, password field focused, Join enabled', () =>
      document.body.dataset.view === 'lobby' &&
      document.body.dataset.joined === 'false' &&
      document.activeElement?.id === 'password-input' &&
      !document.querySelector('[data-testid="join-button"]').disabled);
    const requests = await F.page.evaluate(() => window.__e2eCameraRequests);
    if (requests !== 0) fail(`F asked for its camera ${requests} times for a room it could not enter`);
    const onE = await E.page.evaluate(() => window.__rtcDemo.peers.length);
    if (onE !== 0) fail(`E knows ${onE} peers although F was refused`);
    await screenshotAll('07-locked-prompt');
  }, { requires: [LOCK_SET] });

  await check(LOCK_WRONG, async () => {
    await F.page.locator(tid('password-input')).fill(`not-${PASSWORD}`);
    await F.page.locator(tid('join-button')).click();
    await waitForError(F, /Wrong password for this room/);
    await waitFor(F, 'the lobby, not joined', () =>
      document.body.dataset.view === 'lobby' && document.body.dataset.joined === 'false' &&
      !document.querySelector('[data-testid="join-button"]').disabled);
    log(`  F shows: ${JSON.stringify((await errorTexts(F))[0])}`);
    await screenshotAll('08-wrong-password');
  }, { requires: [LOCK_ASK] });

  await check(LOCK_OPEN, async () => {
    await F.page.locator(tid('password-input')).fill(PASSWORD);
    await F.page.locator(tid('join-button')).click();
    await waitJoined(F);
    await expectPlaying(E, `${peerTile(F.id)} video`, "F's camera on E");
    await expectPlaying(F, `${peerTile(E.id)} video`, "E's camera on F");
    await expectName(E, F.id, 'Frank');
    await expectName(F, E.id, 'Erin');
    if (!(await F.page.locator(tid('room-lock')).isVisible())) fail('F shows no lock badge in the locked room');
    const left = await errorTexts(F);
    if (left.length) fail(`F still shows the lobby's errors after getting in: ${JSON.stringify(left)}`);
    await screenshotAll('09-locked-room');
  }, { requires: [LOCK_WRONG] });

  await check(CHAT, async () => {
    // Markup in a message must arrive as text, never as elements.
    const hello = `Hi Frank, <b>welcome</b> & enjoy ${Date.now().toString(36)}`;
    await E.page.locator(tid('chat-input')).fill(hello);
    await E.page.locator(tid('chat-input')).press('Enter');
    await waitFor(E, 'own message shown at once, input cleared', (text) =>
      window.__rtcDemo.chat.some((m) => m.mine && m.text === text) &&
      document.querySelector('[data-testid="chat-input"]').value === '' &&
      [...document.querySelectorAll('[data-testid="chat-message"][data-mine="true"] [data-testid="chat-text"]')]
        .some((e) => e.textContent === text), hello);
    await waitFor(F, "E's message in F's chat under E's name", ([text, id]) => {
      const ok = window.__rtcDemo.chat.some((m) => !m.mine && m.text === text && m.name === 'Erin' && m.id === id);
      const shown = [...document.querySelectorAll('[data-testid="chat-message"][data-mine="false"]')].some((li) =>
        li.querySelector('[data-testid="chat-name"]').textContent === 'Erin' &&
        li.querySelector('[data-testid="chat-text"]').textContent === text &&
        li.querySelector('time').textContent.trim() !== '');
      return ok && shown;
    }, [hello, E.id]);
    if (await F.page.$('[data-testid="chat-list"] b')) fail('message markup was rendered as HTML on F');

    const reply = `Thanks Erin! ${Date.now().toString(36)}`;
    await F.page.locator(tid('chat-input')).fill(reply);
    await F.page.locator(tid('chat-send')).click();
    await waitFor(E, "F's reply in E's chat under F's name", ([text, id]) =>
      window.__rtcDemo.chat.some((m) => !m.mine && m.text === text && m.name === 'Frank' && m.id === id) &&
      [...document.querySelectorAll('[data-testid="chat-message"][data-mine="false"] [data-testid="chat-name"]')]
        .some((e) => e.textContent === 'Frank'), [reply, F.id]);
    // Each side: its own message once (no echo to the sender) and the other's once.
    for (const p of [E, F]) {
      const chat = await p.page.evaluate(() => window.__rtcDemo.chat.map((m) => `${m.mine ? 'me' : m.name}: ${m.text}`));
      if (chat.length !== 2) fail(`${p.label}'s chat log has ${chat.length} entries: ${JSON.stringify(chat)}`);
    }
    const frozen = await E.page.evaluate(() => {
      const log = window.__rtcDemo.chat;
      try { log.push({}); } catch { /* frozen */ }
      return Object.isFrozen(log) && log.length === 2;
    });
    if (!frozen) fail('window.__rtcDemo.chat is not read-only');
    await screenshotAll('10-chat');
  }, { requires: [LOCK_OPEN] });

  await check('a signaling WebSocket closed with a close frame ends F\'s session; F re-joins the locked room as a fresh session (password re-sent)', async () => {
    const oldId = F.id;
    const before = await callState(F);
    // The route closes both ends with a close frame: the server takes it as F leaving,
    // so F's resume credential is spent and its reconnect is a fresh session.
    await cutSignaling(F);
    await waitRejoined(F, oldId);
    const after = await callState(F);
    if (after.sessions.fresh !== before.sessions.fresh + 1 || after.sessions.recovered !== before.sessions.recovered) {
      fail(`F's sessions went ${JSON.stringify(before.sessions)} -> ${JSON.stringify(after.sessions)}, expected one more fresh one`);
    }
    await expectGone(E, peerTile(oldId), "F's old tile on E");
    const tilesOnE = await E.page.$$eval('.tile.remote', (els) => els.map((e) => e.dataset.peerId));
    if (tilesOnE.join() !== F.id) fail(`E has tiles ${tilesOnE}, expected only F's new one`);
    await expectPlaying(E, `${peerTile(F.id)} video`, "F's camera on E after F re-joined");
    await expectPlaying(F, `${peerTile(E.id)} video`, "E's camera on F after re-joining");
    if (!(await F.page.locator(tid('room-lock')).isVisible())) fail('F lost its lock badge on re-joining');
    const chat = await F.page.evaluate(() => window.__rtcDemo.chat.length);
    if (chat !== 2) fail(`F's chat log has ${chat} entries after re-joining, expected the 2 from before`);
  }, { requires: [CHAT] });

  await check('the room password never shows up in URLs, storage, the console or the server log', async () => {
    const leaks = [];
    for (const p of [E, F]) {
      if (!p?.alive) continue;
      const where = await p.page.evaluate((secret) => {
        const found = [];
        if (location.href.includes(secret)) found.push('URL');
        if (document.querySelector('[data-testid="invite-link"]').value.includes(secret)) found.push('invite link');
        for (const [name, store] of [['localStorage', localStorage], ['sessionStorage', sessionStorage]]) {
          for (let i = 0; i < store.length; i++) {
            const key = store.key(i);
            if (key.includes(secret) || String(store.getItem(key)).includes(secret)) found.push(name);
          }
        }
        if (JSON.stringify(window.__rtcDemo).includes(secret)) found.push('window.__rtcDemo');
        return found;
      }, PASSWORD);
      if (p.console.some((line) => line.includes(PASSWORD))) where.push('console');
      for (const w of where) leaks.push(`${p.label}: ${w}`);
    }
    if (SERVER_LOG) {
      for (const file of [SERVER_LOG, `${SERVER_LOG}.stderr`]) {
        const text = await fs.readFile(file, 'utf8').catch(() => '');
        if (text.includes(PASSWORD)) leaks.push(path.relative(ROOT, file));
      }
    } else {
      log('  (E2E_SERVER_LOG not set: the server log was not searched)');
    }
    if (leaks.length) fail(`the password leaked to: ${leaks.join(', ')}`);
  }, { requires: [LOCK_SET] });

  await check('no errors shown and no page errors on E and F', async () => {
    const problems = [];
    for (const p of [E, F]) {
      if (!p?.alive) continue;
      for (const e of await errorTexts(p)) {
        // F's own signaling drop above is reported on purpose.
        if (p === F && /Lost the signaling connection|Cannot reach the signaling server/.test(e)) continue;
        problems.push(`${p.label} shows error: ${e}`);
      }
      for (const e of p.errors) if (e.startsWith('pageerror')) problems.push(`${p.label} ${e}`);
    }
    if (problems.length) fail(problems.join(' | '));
  }, { requires: [LOCK_OPEN] });

  await screenshotAll('99-final');
}

// ---------------------------------------------------------------------------

const watchdog = setTimeout(async () => {
  results.push({ name: 'overall time limit', ok: false, error: `exceeded ${OVERALL_TIMEOUT_MS} ms` });
  log(`FAIL overall time limit of ${OVERALL_TIMEOUT_MS} ms exceeded`);
  await screenshotAll('timeout').catch(() => {});
  finish(1);
}, OVERALL_TIMEOUT_MS);

function finish(code) {
  clearTimeout(watchdog);
  const passed = results.filter((r) => r.ok).length;
  const failed = results.length - passed;
  for (const p of pages.values()) {
    const interesting = p.errors.filter((e) => !/Failed to load resource/.test(e));
    if (interesting.length) log(`page ${p.label} console/page errors:\n    ${interesting.join('\n    ')}`);
  }
  if (failed) {
    console.log('\nFailures:');
    for (const r of results.filter((x) => !x.ok)) console.log(`  - ${r.name}: ${r.error}`);
  }
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed || code ? 1 : 0);
}

main()
  .catch((err) => {
    results.push({ name: 'test harness', ok: false, error: err?.stack || String(err) });
    log(`FAIL test harness: ${err?.stack || err}`);
  })
  .finally(async () => {
    await Promise.race([browser?.close(), new Promise((r) => setTimeout(r, 5000))]).catch(() => {});
    finish(0);
  });
