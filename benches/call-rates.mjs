#!/usr/bin/env node
// Measures what real browser clients send: the Socket.IO events each page of the
// demo (client-demo/) sends to the server, by event name, with a timestamp per
// event, through a realistic call in one room. For sizing per-socket rate limits;
// a measurement, not a test (it only fails if the call itself cannot be set up).
//
//   benches/call-rates [SERVER_BINARY]          (runs this inside `unshare --net`)
//   SERVER_URL=http://127.0.0.1:3901 node benches/call-rates.mjs
//
// Scenario, one room, PAGES (6) pages in one headless Chromium (fake camera/mic):
//   1. join         the pages join one after another (JOIN_GAP_MS apart, not waiting
//                   for each other), until every page plays video from every other one
//   2. share        the first page shares its screen; once every other page plays the
//                   screen tile it stops the share and the tiles go away
//   3. mute-storm   every page, all at once, toggles its mic 10 times then its camera
//                   4 times by clicking the buttons as fast as the UI takes it (the
//                   buttons' click() in a loop in the page; STORM_CLICKS=playwright
//                   for Playwright mouse clicks instead)
//   4. leave        every page clicks Leave, one after another, then its tab is closed
// Each phase ends SETTLE_MS after its goal is reached, so trailing events (late ICE
// candidates) count in the phase that caused them.
//
// Counting: context.routeWebSocket passes each page's Socket.IO WebSocket through
// this process, which counts every text frame the page sends and forwards it; the
// long-polling POSTs before the upgrade are counted too (context.route). Each event
// gets two timestamps: when it passes this process on its way to the server (the
// tables' main columns; Playwright's route hops page -> here -> the page's real
// WebSocket -> server, so a starved renderer can bunch frames up here), and when
// the page's code handed it to its WebSocket ("page clock", from a wrapper on
// WebSocket.prototype.send). Both are written to events.json.
//
// Env: SERVER_URL (required), CHROMIUM_PATH (default /usr/bin/chromium),
//      PAGES (6), JOIN_GAP_MS (400), SETTLE_MS (2000), PHASE_TIMEOUT_MS (30000: the
//      join's goal), WAIT_MS (60000: the other goals), VIEWPORT (640x400),
//      EXTRA_CHROMIUM_ARGS (space-separated), STORM_CLICKS (page),
//      FULL_MEDIA=1 (capture at the demo's own sizes; see CAMERA_CAP),
//      CALL_RATES_OUT (default <repo>/artifacts/call-rates): events.json,
//      report.md and screenshots of trouble are written there. SERVER_BIN (only printed).
import { chromium } from 'playwright-core';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { CHROMIUM_ARGS as E2E_CHROMIUM_ARGS } from '../tests/e2e/chromium-args.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const SERVER_URL = (process.env.SERVER_URL || '').replace(/\/+$/, '');
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const OUT = path.resolve(ROOT, process.env.CALL_RATES_OUT || 'artifacts/call-rates');
const PAGES = Number(process.env.PAGES || 6);
const JOIN_GAP_MS = Number(process.env.JOIN_GAP_MS || 400);
const SETTLE_MS = Number(process.env.SETTLE_MS || 2000);
const PHASE_TIMEOUT_MS = Number(process.env.PHASE_TIMEOUT_MS || 30_000); // join: everyone plays everyone
const WAIT_MS = Number(process.env.WAIT_MS || 60_000); // the other phases' goals (a share renegotiates 5 links)
const MIC_TOGGLES = 10;
const CAM_TOGGLES = 4;
const OVERALL_TIMEOUT_MS = 420_000;
// Six pages each encode their camera and mic five times and play five others: on a
// 2-core machine that starves everything (remote audio playout alone took ~half of
// it). Unless FULL_MEDIA=1: capture requests are capped (camera 160x120@8, mic without
// echo cancellation / noise suppression / gain control, screen 480x300@4), and remote
// tiles play video only (their <video> gets the stream's video tracks; the page still
// sees the whole stream). That changes bitrates and CPU, not signaling: the same
// tracks, m-lines, offers and candidates.
const FULL_MEDIA = process.env.FULL_MEDIA === '1';
const CAMERA_CAP = { width: { max: 160 }, height: { max: 120 }, frameRate: { max: 8 } };
const SCREEN_CAP = { width: { max: 480 }, height: { max: 300 }, frameRate: { max: 4 } };
const CLICK_TIMEOUT_MS = 10_000;
const [vw, vh] = (process.env.VIEWPORT || '640x400').split('x').map(Number);
const VIEWPORT = { width: vw, height: vh };
// Mute storm clicks: 'page' = the buttons' click() in a loop inside the page (the UI's own
// limit); 'playwright' = Playwright mouse clicks (bounded by round trips to the renderer:
// on a loaded machine one click can take seconds).
const STORM_CLICKS = process.env.STORM_CLICKS === 'playwright' ? 'playwright' : 'page';

// The e2e test's flags, plus --disable-audio-output (and EXTRA_CHROMIUM_ARGS).
const CHROMIUM_ARGS = [
  ...E2E_CHROMIUM_ARGS,
  // Not in the e2e: with thirty remote audio players on a 2-core machine the sixth
  // page's videos mostly never started; nobody listens here anyway.
  '--disable-audio-output',
  ...(process.env.EXTRA_CHROMIUM_ARGS ? process.env.EXTRA_CHROMIUM_ARGS.split(' ') : []),
];

// Rows always shown, in this order; any other event name follows them.
const KNOWN_EVENTS = ['#rtcio:message', 'join-room', 'leave-room', 'media-state', 'stopScreenShare', 'chat-message', 'check-room'];
const PHASES = ['join', 'share', 'mute-storm', 'leave'];

const t0 = performance.now();
const WALL0 = Date.now();
const now = () => performance.now() - t0; // ms since start, sub-ms resolution
const log = (...args) => console.log(`[${(now() / 1000).toFixed(1)}s]`, ...args);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const tid = (id) => `[data-testid="${id}"]`;

let phase = 'setup';
const phaseStarts = [{ name: 'setup', t: 0 }];
const sent = []; // { t, page, phase, name, transport, kind? }
const received = []; // { t, page, phase, name }  (server -> page events over the WebSocket, for context)
const transportFrames = []; // { page, phase, what, transport }  non-event frames the page sent
const pages = [];
const problems = [];
let browser;

// ---------------------------------------------------------------------------
// Socket.IO frame parsing (Engine.IO v4 packet, Socket.IO v5 packet)

/** One Engine.IO packet as text -> what it is: { event, args } for a Socket.IO EVENT, { what } otherwise. */
function parsePacket(text) {
  if (typeof text !== 'string') return { what: 'binary frame' };
  if (text.startsWith('b')) return { what: 'binary packet (base64)' };
  const eio = text[0];
  const eioNames = { 0: 'eio open', 1: 'eio close', 2: 'eio ping', 3: 'eio pong', 5: 'eio upgrade', 6: 'eio noop' };
  if (eio !== '4') return { what: `${eioNames[eio] ?? `eio type ${eio}`}${text.slice(1) === 'probe' ? ' (probe)' : ''}` };
  // Socket.IO packet: type [attachments-] [/nsp,] [ackId] [json]
  const m = /^4([0-6])(?:\d+-)?(?:(\/[^,]*),)?(\d*)([\s\S]*)$/.exec(text);
  if (!m) return { what: 'unparsed socket.io packet' };
  const [, type, , ackId, json] = m;
  const sioNames = { 0: 'sio CONNECT', 1: 'sio DISCONNECT', 2: 'sio EVENT', 3: 'sio ACK', 4: 'sio CONNECT_ERROR', 5: 'sio BINARY_EVENT', 6: 'sio BINARY_ACK' };
  if (type !== '2' && type !== '5') return { what: sioNames[type] };
  try {
    const arr = JSON.parse(json);
    if (!Array.isArray(arr) || typeof arr[0] !== 'string') return { what: 'malformed EVENT' };
    return { event: arr[0], args: arr.slice(1), ack: ackId !== '' };
  } catch {
    return { what: 'malformed EVENT' };
  }
}

/** What an #rtcio:message carries: offer / answer / candidate / end-of-candidates / other. */
function relayKind(args) {
  const data = args[0]?.data;
  if (!data || typeof data !== 'object') return 'other';
  if (data.description) return data.description.type ?? 'description';
  if ('candidate' in data) return data.candidate && data.candidate.candidate ? 'candidate' : 'end-of-candidates';
  return 'other';
}

function countSent(p, text, transport) {
  const t = now();
  const parsed = parsePacket(text);
  if (parsed.event) {
    const e = { t, page: p.label, phase, name: parsed.event, transport };
    if (parsed.event === '#rtcio:message') e.kind = relayKind(parsed.args);
    sent.push(e);
  } else {
    transportFrames.push({ t, page: p.label, phase, what: parsed.what, transport });
  }
}

function countReceived(p, text, transport) {
  const parsed = parsePacket(text);
  if (!parsed.event) return;
  const e = { t: now(), page: p.label, phase, name: parsed.event, transport };
  if (parsed.event === 'error' || parsed.event === 'join-error') e.payload = parsed.args[0];
  received.push(e);
}

// ---------------------------------------------------------------------------
// pages

async function openPage(label) {
  const context = await browser.newContext({
    viewport: VIEWPORT,
    permissions: ['camera', 'microphone'],
  });
  const p = { label, context, page: null, id: null, errors: [], wsCount: 0, pollPosts: 0 };
  await context.routeWebSocket(/\/socket\.io\//, (ws) => {
    p.wsCount += 1;
    const server = ws.connectToServer();
    ws.onMessage((m) => {
      countSent(p, m, 'websocket');
      server.send(m);
    });
    server.onMessage((m) => {
      countReceived(p, m, 'websocket');
      ws.send(m);
    });
    // No onClose handlers: closes are forwarded both ways by default.
  });
  // Long-polling (before the upgrade): a POST body is Engine.IO packets joined by \x1e.
  await context.route(/\/socket\.io\//, (route) => {
    const req = route.request();
    if (req.method() === 'POST') {
      p.pollPosts += 1;
      for (const packet of (req.postData() ?? '').split('\x1e')) if (packet) countSent(p, packet, 'polling');
      route.continue().catch(() => {});
      return;
    }
    route.continue().catch(() => {}); // polling GETs (server -> page) are not counted
  });
  // The same frames on the page's own clock, as the page hands them to its WebSocket
  // (registered after routeWebSocket, so it wraps the WebSocket the page really gets).
  await context.addInitScript(() => {
    const log = [];
    Object.defineProperty(window, '__callRatesSent', { value: log });
    const WS = window.WebSocket;
    const send = WS.prototype.send;
    WS.prototype.send = function (data) {
      if (typeof data === 'string' && String(this.url).includes('/socket.io/')) log.push([performance.timeOrigin + performance.now(), data]);
      return send.call(this, data);
    };
  });
  if (!FULL_MEDIA) {
    await context.addInitScript(([cam, screen]) => {
      const md = navigator.mediaDevices;
      if (!md) return;
      const merge = (video, cap) => ({ ...(video && typeof video === 'object' ? video : {}), ...cap });
      const gum = md.getUserMedia.bind(md);
      // The mic without echo cancellation, noise suppression, gain control: less CPU.
      const quiet = { echoCancellation: false, noiseSuppression: false, autoGainControl: false };
      md.getUserMedia = (c = {}) => gum({
        ...c,
        ...(c.video ? { video: merge(c.video, cam) } : {}),
        ...(c.audio ? { audio: merge(c.audio, quiet) } : {}),
      });
      if (md.getDisplayMedia) {
        const gdm = md.getDisplayMedia.bind(md);
        md.getDisplayMedia = (c = {}) => gdm({ ...c, video: merge(c.video, screen) });
      }
      // Remote tiles play their stream's video only: a <video> in a .tile.remote gets a
      // mirror of the stream without its audio (the page still sees its own stream).
      const desc = Object.getOwnPropertyDescriptor(HTMLMediaElement.prototype, 'srcObject');
      const given = new WeakMap();
      Object.defineProperty(HTMLMediaElement.prototype, 'srcObject', {
        configurable: true,
        enumerable: desc.enumerable,
        get() { return given.has(this) ? given.get(this) : desc.get.call(this); },
        set(stream) {
          given.delete(this);
          if (!(stream instanceof MediaStream) || !this.closest('.tile.remote')) return desc.set.call(this, stream);
          const mirror = new MediaStream(stream.getVideoTracks());
          stream.addEventListener('addtrack', ({ track }) => { if (track.kind === 'video') mirror.addTrack(track); });
          stream.addEventListener('removetrack', ({ track }) => mirror.removeTrack(track));
          given.set(this, stream);
          return desc.set.call(this, mirror);
        },
      });
    }, [CAMERA_CAP, SCREEN_CAP]);
  }
  const page = await context.newPage();
  p.page = page;
  page.on('pageerror', (err) => p.errors.push(`pageerror: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error' && !/Failed to load resource/.test(msg.text())) p.errors.push(`console: ${msg.text()}`);
  });
  await page.goto(`${SERVER_URL}/`, { waitUntil: 'load', timeout: 30_000 });
  await page.waitForFunction(() => document.body.dataset.ready === 'true', null, { timeout: 30_000, polling: 100 });
  pages.push(p);
  return p;
}

/** Polls fn (async, returns truthy when done) every `every` ms; true if done within `timeout`. */
async function pollUntil(fn, timeout, every = 250) {
  const end = Date.now() + timeout;
  for (;;) {
    if (await fn()) return true;
    if (Date.now() > end) return false;
    await sleep(every);
  }
}

/**
 * Per page, the remote <video>s matching `selectorOf(id)` for each other page's id, and
 * whether each plays: frames shown and currentTime moved 0.25 s past the first look.
 */
function makePlayTracker(selectorOf) {
  const firstSeen = new Map(); // `${viewer}->${owner}` -> currentTime
  const playing = new Set();
  const check = async () => {
    await Promise.all(pages.map(async (viewer) => {
      const others = pages.filter((o) => o !== viewer && o.id);
      const sels = others.map((o) => [o.label, selectorOf(o.id)]);
      const seen = await viewer.page.evaluate((list) => list.map(([owner, sel]) => {
        const v = document.querySelector(sel);
        return [owner, v ? { w: v.videoWidth, rs: v.readyState, ct: v.currentTime } : null];
      }), sels).catch(() => []);
      for (const [owner, v] of seen) {
        const key = `${viewer.label}->${owner}`;
        if (playing.has(key) || !v || v.w === 0 || v.rs < 2) continue;
        if (!firstSeen.has(key)) firstSeen.set(key, v.ct);
        else if (v.ct > firstSeen.get(key) + 0.25) playing.add(key);
      }
    }));
    return playing;
  };
  return { check, playing };
}

async function pageState(p) {
  return p.page.evaluate(() => ({
    status: document.querySelector('[data-testid="status"]')?.dataset.state,
    joined: window.__rtcDemo?.joined,
    peers: window.__rtcDemo?.peers.map((x) => `${x.id.slice(0, 6)}:${x.connectionState}`),
    errors: [...document.querySelectorAll('[data-testid="error-item"] .message')].map((e) => e.textContent),
  })).catch((err) => ({ error: err.message.split('\n')[0] }));
}

async function screenshots(tag) {
  await Promise.all(pages.map((p) =>
    p.page.screenshot({ path: path.join(OUT, `${tag}-${p.label}.png`), timeout: 10_000 }).catch(() => {})));
  log(`  screenshots -> ${path.relative(ROOT, OUT)}/${tag}-P*.png`);
}

function setPhase(name) {
  phase = name;
  phaseStarts.push({ name, t: now() });
  log(`--- phase ${name}`);
}

// ---------------------------------------------------------------------------
// the scenario

async function scenario() {
  // Setup: load every page (no signaling yet: the socket opens on Join).
  await Promise.all(Array.from({ length: PAGES }, (_, i) => openPage(`P${i + 1}`)));
  pages.sort((a, b) => a.label.localeCompare(b.label, 'en', { numeric: true }));
  const roomId = await pages[0].page.locator(tid('room-input')).inputValue();
  for (const [i, p] of pages.entries()) {
    await p.page.locator(tid('room-input')).fill(roomId);
    await p.page.locator(tid('name-input')).fill(`Person ${i + 1}`);
  }
  log(`${pages.length} pages loaded; room ${roomId}`);

  // 1. join: people arriving one after another.
  setPhase('join');
  const joinStart = Date.now();
  for (const [i, p] of pages.entries()) {
    if (i) await sleep(JOIN_GAP_MS);
    await p.page.locator(tid('join-button')).click();
  }
  log(`all ${pages.length} clicked Join within ${Date.now() - joinStart} ms`);
  const deadline = Date.now() + PHASE_TIMEOUT_MS;
  await pollUntil(async () => {
    await Promise.all(pages.map(async (p) => {
      if (!p.id) p.id = await p.page.evaluate(() => (window.__rtcDemo.joined ? window.__rtcDemo.peerId : null)).catch(() => null);
    }));
    return pages.every((p) => p.id);
  }, Math.max(0, deadline - Date.now()));
  const notJoined = pages.filter((p) => !p.id);
  if (notJoined.length) {
    for (const p of notJoined) log(`  ${p.label} did not join: ${JSON.stringify(await pageState(p))}`);
    throw new Error(`${notJoined.length} page(s) did not join within ${PHASE_TIMEOUT_MS} ms`);
  }
  const cams = makePlayTracker((id) => `.tile.remote[data-peer-id="${id}"] video`);
  const want = pages.length * (pages.length - 1);
  const allPlaying = await pollUntil(async () => (await cams.check()).size === want, Math.max(0, deadline - Date.now()));
  if (allPlaying) {
    log(`every page plays all ${pages.length - 1} others' cameras, ${Date.now() - joinStart} ms after the first Join`);
  } else {
    const missing = [];
    for (const v of pages) for (const o of pages) if (v !== o && !cams.playing.has(`${v.label}->${o.label}`)) missing.push(`${v.label}->${o.label}`);
    const msg = `join: after ${PHASE_TIMEOUT_MS} ms only ${cams.playing.size}/${want} camera tiles play; missing (viewer->owner): ${missing.join(' ')}`;
    problems.push(msg);
    log(`  ${msg}`);
    for (const p of pages) log(`  ${p.label}: ${JSON.stringify(await pageState(p))}`);
    await screenshots('join');
  }
  await sleep(SETTLE_MS);

  // 2. one page shares its screen, everyone sees it, it stops.
  setPhase('share');
  const sharer = pages[0];
  const shareStart = Date.now();
  await sharer.page.locator(tid('share-toggle')).click();
  const screens = makePlayTracker((id) => (id === sharer.id ? `.tile.screen[data-screen-of="${id}"] video` : '#no-such-element'));
  const wantScreens = pages.length - 1;
  const sharedOk = await pollUntil(async () => (await screens.check()).size === wantScreens, WAIT_MS);
  if (sharedOk) log(`${sharer.label}'s screen plays on all ${wantScreens} others after ${Date.now() - shareStart} ms`);
  else {
    const msg = `share: after ${WAIT_MS} ms ${sharer.label}'s screen plays on only ${screens.playing.size}/${wantScreens} pages`;
    problems.push(msg);
    log(`  ${msg}`);
    await screenshots('share');
  }
  const stopStart = Date.now();
  await sharer.page.locator(tid('share-toggle')).click();
  const goneOk = await pollUntil(async () => {
    const left = await Promise.all(pages.filter((p) => p !== sharer).map((p) =>
      p.page.evaluate((id) => document.querySelectorAll(`.tile.screen[data-screen-of="${id}"]`).length, sharer.id).catch(() => 1)));
    return left.every((n) => n === 0);
  }, WAIT_MS);
  if (goneOk) log(`screen tiles gone on every page ${Date.now() - stopStart} ms after the stop`);
  else problems.push(`share: screen tiles still shown ${WAIT_MS} ms after the stop`);
  await sleep(SETTLE_MS);

  // 3. mute storm: all pages at once, each clicking as fast as the UI takes it.
  setPhase('mute-storm');
  const stormStart = Date.now();
  await Promise.all(pages.map(async (p) => {
    if (STORM_CLICKS === 'page') {
      // The buttons' own click(), each in its own task: the UI has no debounce, so this
      // is as fast as it goes (holding Enter on a focused button comes close: key repeat).
      try {
        p.stormClicksMs = await p.page.evaluate(async ([micN, camN]) => {
          const click = async (id) => {
            document.querySelector(`[data-testid="${id}"]`).click();
            await new Promise((r) => setTimeout(r, 0));
          };
          const start = performance.now();
          for (let i = 0; i < micN; i++) await click('mic-toggle');
          for (let i = 0; i < camN; i++) await click('cam-toggle');
          return performance.now() - start;
        }, [MIC_TOGGLES, CAM_TOGGLES]);
      } catch (err) {
        problems.push(`mute-storm: ${p.label}: ${err.message.split('\n')[0]}`);
      }
      return;
    }
    const mic = p.page.locator(tid('mic-toggle'));
    const cam = p.page.locator(tid('cam-toggle'));
    const start = Date.now();
    try {
      // force: no actionability wait (two animation frames per click on a starved
      // renderer); the buttons are on screen and enabled. Still real mouse clicks.
      for (let i = 0; i < MIC_TOGGLES; i++) await mic.click({ timeout: CLICK_TIMEOUT_MS, force: true });
      for (let i = 0; i < CAM_TOGGLES; i++) await cam.click({ timeout: CLICK_TIMEOUT_MS, force: true });
    } catch (err) {
      problems.push(`mute-storm: ${p.label}: ${err.message.split('\n')[0]}`);
    }
    p.stormClicksMs = Date.now() - start;
  }));
  log(`storm clicks (${STORM_CLICKS}) done in ${Date.now() - stormStart} ms; per page ${pages.map((p) => `${p.label} ${p.stormClicksMs?.toFixed(1)} ms`).join(', ')}` +
    ` (${MIC_TOGGLES + CAM_TOGGLES} clicks each)`);
  // An even number of toggles: everyone ends with mic and camera on, and everyone sees that.
  const settled = await pollUntil(async () => {
    const ok = await Promise.all(pages.map((p) => p.page.evaluate(() =>
      document.querySelector('[data-testid="mic-toggle"]').dataset.state === 'on' &&
      document.querySelector('[data-testid="cam-toggle"]').dataset.state === 'on' &&
      [...document.querySelectorAll('.tile.remote')].every((t) => t.dataset.mic === 'on' && t.dataset.cam === 'on')).catch(() => false)));
    return ok.every(Boolean);
  }, WAIT_MS);
  if (settled) log(`every page shows everyone unmuted again ${Date.now() - stormStart} ms after the storm began`);
  else {
    problems.push(`mute-storm: final mic/cam state not shown everywhere within ${WAIT_MS} ms`);
    await screenshots('mute-storm');
  }
  await sleep(SETTLE_MS);

  // 4. leave: one after another, then the tab closes.
  setPhase('leave');
  for (const [i, p] of pages.entries()) {
    if (i) await sleep(JOIN_GAP_MS);
    await p.page.locator(tid('leave-button')).click({ timeout: CLICK_TIMEOUT_MS, force: true })
      .catch((err) => problems.push(`leave: ${p.label}: ${err.message.split('\n')[0]}`));
  }
  await pollUntil(async () => {
    const v = await Promise.all(pages.map((p) => p.page.evaluate(() => document.body.dataset.view).catch(() => 'lobby')));
    return v.every((x) => x === 'lobby');
  }, 10_000);
  await sleep(500);
  for (const p of pages) {
    const shown = await p.page.$$eval('[data-testid="error-item"] .message', (els) => els.map((e) => e.textContent)).catch(() => []);
    for (const e of shown) p.errors.push(`shown: ${e}`);
  }
  await collectPageLogs();
  await Promise.all(pages.map((p) => p.context.close().catch(() => {})));
  await sleep(500); // closes reach the server
  setPhase('after');
}

/** The frames each page handed to its WebSocket, on the page's clock, mapped onto ours. */
async function collectPageLogs() {
  await Promise.all(pages.map(async (p) => {
    if (p.pageLog) return;
    const log = await Promise.race([
      p.page.evaluate(() => window.__callRatesSent.slice()).catch(() => null),
      sleep(10_000).then(() => null),
    ]);
    if (log) p.pageLog = log;
  }));
}

function phaseAt(t) {
  let name = phaseStarts[0].name;
  for (const ph of phaseStarts) if (ph.t <= t) name = ph.name;
  return name;
}

/** Events from the pages' own logs: { t (our clock), page, phase, name, kind }. */
function pageSideEvents() {
  const out = [];
  for (const p of pages) {
    for (const [wall, data] of p.pageLog ?? []) {
      const parsed = parsePacket(data);
      if (!parsed.event) continue;
      const t = wall - WALL0;
      const e = { t, page: p.label, phase: phaseAt(t), name: parsed.event };
      if (parsed.event === '#rtcio:message') e.kind = relayKind(parsed.args);
      out.push(e);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------
// statistics

/** Most timestamps (sorted) within any window of `w` ms: t_j - t_i < w. */
function maxInWindow(ts, w) {
  let best = 0;
  for (let i = 0, j = 0; j < ts.length; j++) {
    while (ts[j] - ts[i] >= w) i++;
    best = Math.max(best, j - i + 1);
  }
  return best;
}

/** For events (already filtered to a scope): per name, max over pages of total / 1 s / 100 ms. */
function summarize(events, keyOf = (e) => e.name) {
  const byName = new Map();
  const add = (name, e) => {
    if (!byName.has(name)) byName.set(name, new Map());
    const perPage = byName.get(name);
    if (!perPage.has(e.page)) perPage.set(e.page, []);
    perPage.get(e.page).push(e.t);
  };
  for (const e of events) {
    add(keyOf(e), e);
    add('(all events)', e);
  }
  const rows = new Map();
  for (const [name, perPage] of byName) {
    let total = 0, w1s = 0, w100 = 0, sum = 0;
    for (const ts of perPage.values()) {
      ts.sort((a, b) => a - b);
      total = Math.max(total, ts.length);
      w1s = Math.max(w1s, maxInWindow(ts, 1000));
      w100 = Math.max(w100, maxInWindow(ts, 100));
      sum += ts.length;
    }
    rows.set(name, { pages: perPage.size, total, w1s, w100, sum });
  }
  return rows;
}

function orderedNames(rows, known) {
  const rest = [...rows.keys()].filter((n) => !known.includes(n) && n !== '(all events)').sort();
  return [...known, ...rest, '(all events)'];
}

function textTable(header, body) {
  const widths = header.map((h, i) => Math.max(String(h).length, ...body.map((r) => String(r[i]).length)));
  const line = (r) => r.map((c, i) => (i === 0 ? String(c).padEnd(widths[i]) : String(c).padStart(widths[i]))).join('  ');
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...body.map(line)].join('\n');
}

function report(meta) {
  const out = [];
  const pageSent = pageSideEvents();
  const havePageLog = pages.some((p) => p.pageLog);
  const inScope = (events, scope) => (scope === 'overall' ? events : events.filter((e) => e.phase === scope));
  const scopes = [...PHASES, 'overall'];
  const stray = sent.filter((e) => !PHASES.includes(e.phase));
  if (stray.length) out.push(`(${stray.length} event(s) outside the phases: ${[...new Set(stray.map((e) => `${e.phase}:${e.name}`))].join(', ')}; counted in overall)`);

  // One row: [name, pages, total, 1 s, 100 ms, page-clock 1 s, page-clock 100 ms, all pages].
  const zero = { pages: 0, total: 0, w1s: 0, w100: 0, sum: 0 };
  const row = (name, r, pr) => [name, r.pages, r.total, r.w1s, r.w100, havePageLog ? pr.w1s : '-', havePageLog ? pr.w100 : '-', r.sum];
  const header = ['event', 'pages', 'total/page (max)', 'max in 1 s', 'max in 100 ms', 'page clock: 1 s', '100 ms', 'all pages'];
  const md = [];
  md.push('| phase | event | total per page (max) | max in any 1 s | max in any 100 ms | page clock: 1 s / 100 ms |');
  md.push('|---|---|--:|--:|--:|--:|');
  for (const scope of scopes) {
    const events = inScope(sent, scope);
    const rows = summarize(events);
    const prows = summarize(inScope(pageSent, scope));
    const body = orderedNames(rows, KNOWN_EVENTS).map((n) => row(n, rows.get(n) ?? zero, prows.get(n) ?? zero));
    const span = events.length ? `${((Math.max(...events.map((e) => e.t)) - Math.min(...events.map((e) => e.t))) / 1000).toFixed(1)} s from first to last event` : 'no events';
    out.push(`\n## ${scope} (${span})\n`);
    out.push(textTable(header, body));
    for (const [n, , total, w1s, w100, pw1s, pw100] of body) {
      md.push(`| ${scope} | \`${n}\` | ${total} | ${w1s} | ${w100} | ${pw1s} / ${pw100} |`);
    }
  }

  // #rtcio:message by what it carries.
  const kinds = ['offer', 'answer', 'candidate', 'end-of-candidates', 'other'];
  const kindBody = [];
  for (const scope of scopes) {
    const rows = summarize(inScope(sent, scope).filter((e) => e.name === '#rtcio:message'), (e) => e.kind);
    const prows = summarize(inScope(pageSent, scope).filter((e) => e.name === '#rtcio:message'), (e) => e.kind);
    for (const k of kinds) if (rows.get(k)) kindBody.push(row(`${scope}: ${k}`, rows.get(k), prows.get(k) ?? zero));
  }
  out.push('\n## #rtcio:message by content\n');
  out.push(textTable(['phase: carries', ...header.slice(1)], kindBody));

  // The two clocks should see the same frames.
  if (havePageLog) {
    const wsSent = sent.filter((e) => e.transport === 'websocket');
    const diffs = pages.map((p) => {
      const a = wsSent.filter((e) => e.page === p.label).length;
      const b = pageSent.filter((e) => e.page === p.label).length;
      return a === b ? null : `${p.label}: ${a} at the route, ${b} in the page's log`;
    }).filter(Boolean);
    out.push(`\nPage-side log vs route: ${diffs.length ? `differ (${diffs.join('; ')})` : `same event count on every page (${wsSent.length} WebSocket events)`}`);
  } else {
    out.push('\nPage-side log: not collected (page clock columns are "-")');
  }

  // Transport-level frames and where events went.
  const tf = new Map();
  for (const f of transportFrames) tf.set(`${f.what} [${f.transport}]`, (tf.get(`${f.what} [${f.transport}]`) ?? 0) + 1);
  out.push('\n## Not events (not in the tables above): frames the pages sent, all pages together\n');
  out.push([...tf].sort().map(([k, v]) => `  ${k}: ${v}`).join('\n') || '  none');
  const polled = sent.filter((e) => e.transport === 'polling');
  out.push(`\nEvents sent in long-polling POSTs (before the WebSocket upgrade; counted above): ${polled.length}` +
    (polled.length ? ` (${[...new Set(polled.map((e) => e.name))].join(', ')})` : ''));
  out.push(`Polling POSTs: ${pages.map((p) => `${p.label} ${p.pollPosts}`).join(', ')}; WebSockets opened: ${pages.map((p) => `${p.label} ${p.wsCount}`).join(', ')}`);
  const clicks = pages.filter((p) => p.stormClicksMs).map((p) => `${p.label} ${(p.stormClicksMs / (MIC_TOGGLES + CAM_TOGGLES)).toFixed(1)} ms`);
  if (clicks.length) out.push(`Mute storm (${STORM_CLICKS} clicks), mean time per click: ${clicks.join(', ')}`);

  // What the server said back (a limit hit would show up as `error`).
  const rx = summarize(received);
  out.push('\n## Received by the pages (server -> page, WebSocket only), whole run\n');
  out.push(textTable(['event', 'pages', 'total/page (max)', 'max in 1 s', 'max in 100 ms', 'all pages'],
    orderedNames(rx, []).map((n) => { const r = rx.get(n); return [n, r.pages, r.total, r.w1s, r.w100, r.sum]; })));
  const refusals = received.filter((e) => e.name === 'error' || e.name === 'join-error');
  out.push(refusals.length
    ? `\nRefusals received: ${refusals.map((e) => `${e.page} ${e.phase} ${e.name} ${JSON.stringify(e.payload)}`).join('; ')}`
    : '\nRefusals received (error / join-error): none');

  const head = [
    '# Socket.IO events sent per page: benches/call-rates',
    `date:      ${new Date().toISOString()}`,
    `chromium:  ${meta.chromium}`,
    `server:    commit ${meta.commit}; ${meta.server} at ${SERVER_URL}`,
    `media:     ${FULL_MEDIA ? "as the demo asks" : `capped: camera ${JSON.stringify(CAMERA_CAP)}, screen ${JSON.stringify(SCREEN_CAP)}, mic without processing; remote tiles play video only`}`,
    `scenario:  ${pages.length} pages, one room; join ${JOIN_GAP_MS} ms apart; screen share by P1; storm ${MIC_TOGGLES} mic + ${CAM_TOGGLES} cam clicks per page (${STORM_CLICKS}); leave ${JOIN_GAP_MS} ms apart; settle ${SETTLE_MS} ms per phase`,
    `machine:   ${meta.cpus} CPUs, load ${meta.load} at start`,
    'Per event name: the most one page sent in the phase (max over pages), and the most one page sent within any',
    '1 s / 100 ms window, timed where the frame passes the route on its way to the server; "page clock": the same',
    'windows timed when the page handed the frame to its WebSocket. "all pages": the sum over pages.',
  ];
  const problemsText = problems.length ? `\nProblems:\n${problems.map((x) => `  - ${x}`).join('\n')}` : '\nProblems: none (every phase reached its goal)';
  const errors = pages.flatMap((p) => p.errors.map((e) => `  ${p.label} ${e}`));
  const errorsText = errors.length ? `\nPage errors / shown errors:\n${errors.join('\n')}` : '';
  return { text: [...head, ...out, problemsText, errorsText].join('\n'), markdown: md.join('\n') };
}

// ---------------------------------------------------------------------------

function gitCommit() {
  try {
    const sha = execFileSync('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).trim();
    const dirty = execFileSync('git', ['-C', ROOT, 'status', '--porcelain', '--untracked-files=no', '--', 'src', 'Cargo.toml', 'Cargo.lock'], { encoding: 'utf8' })
      .split('\n').filter(Boolean).map((l) => l.slice(3));
    return dirty.length ? `${sha} + uncommitted changes in ${dirty.join(' ')}` : sha;
  } catch (err) {
    return `unknown (${err.message.split('\n')[0]})`;
  }
}

async function main() {
  if (!SERVER_URL) {
    console.error('SERVER_URL is not set (e.g. SERVER_URL=http://127.0.0.1:3901); or run benches/call-rates');
    process.exit(2);
  }
  await fs.mkdir(OUT, { recursive: true });
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
  const os = await import('node:os');
  const bin = process.env.SERVER_BIN;
  const binTime = bin ? await fs.stat(bin).then((st) => st.mtime.toISOString(), () => '?') : null;
  const meta = { chromium: browser.version(), commit: gitCommit(), server: bin ? `${path.relative(ROOT, bin)} (built ${binTime})` : '(binary not given)', cpus: os.cpus().length, load: os.loadavg().map((x) => x.toFixed(2)).join(' ') };
  log(`chromium ${meta.chromium}, server commit ${meta.commit}, ${SERVER_URL}`);

  let failed = null;
  const watchdog = setTimeout(() => {
    failed = new Error(`overall time limit of ${OVERALL_TIMEOUT_MS} ms exceeded`);
    log(`FAIL ${failed.message}; reporting what was counted`);
    finish();
  }, OVERALL_TIMEOUT_MS);
  let finished = false;
  browser.on('disconnected', async () => {
    if (finished || phase === 'after') return;
    failed = new Error(`Chromium went away during phase ${phase}`);
    // Its output is in DEBUG_FILE when run with DEBUG=pw:browser (benches/call-rates does).
    const tail = process.env.DEBUG_FILE
      ? (await fs.readFile(process.env.DEBUG_FILE, 'utf8').catch(() => '')).trim().split('\n').slice(-20).join('\n  ')
      : '(run with DEBUG=pw:browser DEBUG_FILE=... to keep its output)';
    log(`FAIL ${failed.message}; its last output:\n  ${tail}`);
    finish();
  });
  async function finish() {
    if (finished) return;
    finished = true;
    clearTimeout(watchdog);
    await collectPageLogs().catch(() => {});
    const { text, markdown } = report(meta);
    console.log(`\n${text}\n\n## Markdown\n\n${markdown}\n`);
    const pageLogged = pageSideEvents();
    await fs.writeFile(path.join(OUT, 'events.json'), JSON.stringify({ meta, phaseStarts, sent, pageLogged, received, transportFrames, problems }, null, 1));
    await fs.writeFile(path.join(OUT, 'report.md'), `${text}\n\n${markdown}\n`);
    console.log(`raw events -> ${path.relative(ROOT, path.join(OUT, 'events.json'))}, report -> ${path.relative(ROOT, path.join(OUT, 'report.md'))}`);
    await Promise.race([browser.close(), sleep(5000)]).catch(() => {});
    if (failed) console.log(`FAILED: ${failed.message}`);
    process.exit(failed ? 1 : 0);
  }
  try {
    await scenario();
  } catch (err) {
    failed = err;
    log(`FAIL ${err.stack || err}`);
  }
  await finish();
}

main();
