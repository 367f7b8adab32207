// What a browser's upgrade headers cost our server per connection. Opens N Socket.IO
// WebSocket clients that send the headers Chromium sends on an upgrade (plus, optionally, a
// cookie of C bytes), joins each to a room of 4, and prints the live heap per client from
// GET /debug/heap. It needs a heap-census build (see benches/heap-census) already listening:
//
//   JWT_SECRET=<secret> target/heap-census/release/rtcio-signal --port 3998 &
//   JWT_SECRET=<secret> node benches/browser-headers.mjs 3998 2000 1000
//
// Use a fresh server for each run. Every wait is bounded by the 10 s handshake timeout.
import WebSocket from 'ws';
import jwt from 'jsonwebtoken';

const [port, clients, cookieBytes = 0] = process.argv.slice(2).map(Number);
const secret = process.env.JWT_SECRET;
if (!port || !clients || !secret) {
  console.error('usage: JWT_SECRET=... node benches/browser-headers.mjs PORT CLIENTS [COOKIE_BYTES]');
  process.exit(2);
}
const base = `127.0.0.1:${port}`;
const liveBytes = async () => {
  const res = await fetch(`http://${base}/debug/heap`);
  if (!res.ok) throw new Error(`GET /debug/heap: ${res.status} (not a heap-census build?)`);
  return (await res.json()).liveBytes;
};
const headers = {
  Pragma: 'no-cache',
  'Cache-Control': 'no-cache',
  'User-Agent':
    'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36',
  Origin: `http://${base}`,
  'Accept-Encoding': 'gzip, deflate, br, zstd',
  'Accept-Language': 'en-US,en;q=0.9',
};
if (cookieBytes > 0) headers.Cookie = `session=${'x'.repeat(cookieBytes)}`;

function connectAndJoin(i) {
  const token = jwt.sign({ sub: `b${i}`, name: `b${i}` }, secret, { expiresIn: 3600 });
  const ws = new WebSocket(`ws://${base}/socket.io/?EIO=4&transport=websocket`, {
    headers,
    perMessageDeflate: true,
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`client ${i}: no join-ok within 10 s`)), 10_000);
    ws.on('error', reject);
    ws.on('message', (data) => {
      const text = data.toString();
      if (text === '2') ws.send('3');
      else if (text[0] === '0') ws.send(`40${JSON.stringify({ token })}`);
      else if (text.startsWith('40')) {
        ws.send(`42${JSON.stringify(['join-room', { roomId: `b${i >> 2}`, name: `b${i}` }])}`);
      } else if (text.startsWith('44')) reject(new Error(`client ${i}: refused ${text}`));
      else if (text.includes('"join-ok"')) {
        clearTimeout(timer);
        resolve(ws);
      }
    });
  });
}

const before = await liveBytes();
const sockets = [];
for (let i = 0; i < clients; i++) sockets.push(await connectAndJoin(i));
const after = await liveBytes();
console.log(
  `${clients} clients, Chromium upgrade headers, cookie ${cookieBytes} B: ` +
    `${Math.round((after - before) / clients)} live heap bytes per client`,
);
for (const ws of sockets) ws.terminate();
