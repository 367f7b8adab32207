// Node reference signaling server, for the side-by-side benchmarks only (benches/loadgen).
//
// Behaves like rtc.io-server with the quickstart room handlers (seed 004) plus what
// PROTOCOL.md adds, so that the load generator can drive both servers with one client:
//   - `io.use` middleware verifying an HS256 JWT from `socket.handshake.auth.token`
//     (env JWT_SECRET), refusing with `missing token` / `invalid token` / `token expired`;
//   - the rtc.io-server core relay: `#rtcio:message {source,target,data}` is sent to socket
//     `target` with `source` set to the sender's id (here only to a socket sharing a room with
//     the sender, as PROTOCOL.md requires of ours; NODE_REF_RELAY_CHECK=0 turns that off);
//   - `join-room` with snapshot, backfill (user-connected + cached media-state), `join-ok`,
//     then `user-connected` + `#rtcio:init-offer` to the existing members;
//   - `media-state` cache + echo, `stopScreenShare` echo (both with `id` set by the server);
//   - `leave-room`, and `disconnecting` -> `#rtcio:peer-left` + `user-disconnected`;
//   - GET /health: `{rooms, sockets, mediaStates}` where `rooms` counts protocol rooms only
//     (the adapter's rooms minus each socket's own room), for the churn left-over check.
//
// Settings: pingInterval 25 s, pingTimeout 60 s, maxHttpBufferSize 64 KiB, polling + websocket.
// Env: PORT (default 3001), HOST (default 127.0.0.1), JWT_SECRET (required).
// Prints `node-reference listening on http://HOST:PORT` once it accepts connections.

import http from "node:http";
import { Server } from "socket.io";
import jwt from "jsonwebtoken";

const PORT = process.env.PORT ? parseInt(process.env.PORT, 10) : 3001;
const HOST = process.env.HOST || "127.0.0.1";
const SECRET = process.env.JWT_SECRET;
const RELAY_CHECK = process.env.NODE_REF_RELAY_CHECK !== "0";
if (!SECRET) {
  console.error("JWT_SECRET is required");
  process.exit(2);
}

const INIT_OFFER = "#rtcio:init-offer";
const MESSAGE = "#rtcio:message";
const PEER_LEFT = "#rtcio:peer-left";

// Last media state per socket id, so late joiners see who is muted.
const lastMediaState = new Map();

const httpServer = http.createServer((req, res) => {
  if (req.method === "GET" && req.url === "/health") {
    let rooms = 0;
    for (const roomId of io.sockets.adapter.rooms.keys()) {
      if (!io.sockets.sockets.has(roomId)) rooms++;
    }
    res.writeHead(200, { "content-type": "application/json" });
    res.end(
      JSON.stringify({
        status: "ok",
        rooms,
        sockets: io.sockets.sockets.size,
        mediaStates: lastMediaState.size,
      }),
    );
    return;
  }
  // socket.io answers /socket.io/ itself; anything else is not ours.
  if (!req.url.startsWith("/socket.io/")) {
    res.writeHead(404);
    res.end();
  }
});

const io = new Server(httpServer, {
  cors: { origin: "*" },
  pingInterval: 25000,
  pingTimeout: 60000,
  maxHttpBufferSize: 65536,
  transports: ["polling", "websocket"],
});

io.use((socket, next) => {
  const token = socket.handshake.auth && socket.handshake.auth.token;
  if (typeof token !== "string" || token.length === 0) return next(new Error("missing token"));
  let claims;
  try {
    claims = jwt.verify(token, SECRET, { algorithms: ["HS256"] });
  } catch (e) {
    return next(new Error(e && e.name === "TokenExpiredError" ? "token expired" : "invalid token"));
  }
  if (typeof claims !== "object" || typeof claims.sub !== "string" || typeof claims.exp !== "number") {
    return next(new Error("invalid token"));
  }
  socket.data.user = claims.sub;
  socket.data.tokenName = typeof claims.name === "string" ? claims.name : undefined;
  socket.data.allowedRooms = Array.isArray(claims.rooms) ? new Set(claims.rooms) : null;
  next();
});

function validRoomId(roomId) {
  // 1..=128 characters, no control characters.
  return (
    typeof roomId === "string" &&
    roomId.length >= 1 &&
    [...roomId].length <= 128 &&
    !/[\u0000-\u001f\u007f-\u009f]/.test(roomId)
  );
}

function sharesRoom(socket, targetId) {
  const rooms = io.sockets.adapter.rooms;
  for (const roomId of socket.rooms) {
    if (roomId === socket.id) continue;
    const members = rooms.get(roomId);
    if (members && members.has(targetId)) return true;
  }
  return false;
}

function leave(socket, roomId) {
  socket.to(roomId).emit(PEER_LEFT, { id: socket.id });
  socket.to(roomId).emit("user-disconnected", { id: socket.id });
  socket.leave(roomId);
  // The cache is per socket: drop it once the socket is in no protocol room.
  if (socket.rooms.size <= 1) lastMediaState.delete(socket.id);
}

io.on("connection", (socket) => {
  socket.on("join-room", (payload) => {
    const roomId = payload && payload.roomId;
    let name = payload && payload.name;
    if (!validRoomId(roomId)) {
      socket.emit("join-error", { roomId: typeof roomId === "string" ? roomId : null, reason: "invalid-room" });
      return;
    }
    if (name !== undefined && (typeof name !== "string" || [...name].length > 64)) {
      socket.emit("join-error", { roomId, reason: "invalid-name" });
      return;
    }
    if (socket.data.allowedRooms && !socket.data.allowedRooms.has(roomId)) {
      socket.emit("join-error", { roomId, reason: "forbidden" });
      return;
    }
    if (socket.data.tokenName !== undefined) name = socket.data.tokenName;
    if (socket.rooms.has(roomId)) {
      // Already a member: nothing changes for the others.
      socket.emit("join-ok", { roomId });
      return;
    }
    socket.data.name = name;

    // Snapshot existing peers BEFORE joining the room.
    const existing = Array.from(io.sockets.adapter.rooms.get(roomId) ?? []);
    socket.join(roomId);

    // Backfill the newcomer with each existing peer's identity + last media state.
    for (const id of existing) {
      const existingSocket = io.sockets.sockets.get(id);
      if (!existingSocket) continue;
      socket.emit("user-connected", { id, name: existingSocket.data.name });
      const state = lastMediaState.get(id);
      if (state) socket.emit("media-state", { id, roomId, mic: state.mic, cam: state.cam });
    }
    socket.emit("join-ok", { roomId });

    // Tell every existing peer about the newcomer, and let them start the offer.
    socket.to(roomId).emit("user-connected", { id: socket.id, name });
    socket.to(roomId).emit(INIT_OFFER, { source: socket.id });
  });

  socket.on("leave-room", (payload) => {
    const roomId = payload && payload.roomId;
    if (typeof roomId !== "string" || roomId === socket.id || !socket.rooms.has(roomId)) {
      socket.emit("error", { event: "leave-room", code: "not-in-room", message: "not in that room" });
      return;
    }
    leave(socket, roomId);
  });

  socket.on("media-state", (data) => {
    if (!data || typeof data.roomId !== "string" || data.roomId === socket.id || !socket.rooms.has(data.roomId)) {
      socket.emit("error", { event: "media-state", code: "not-in-room", message: "not in that room" });
      return;
    }
    if (typeof data.mic === "boolean" && typeof data.cam === "boolean") {
      lastMediaState.set(socket.id, { mic: data.mic, cam: data.cam });
    }
    socket.to(data.roomId).emit("media-state", { ...data, id: socket.id });
  });

  socket.on("stopScreenShare", (data) => {
    if (!data || typeof data.roomId !== "string" || data.roomId === socket.id || !socket.rooms.has(data.roomId)) {
      socket.emit("error", { event: "stopScreenShare", code: "not-in-room", message: "not in that room" });
      return;
    }
    socket.to(data.roomId).emit("stopScreenShare", { ...data, id: socket.id });
  });

  // rtc.io-server's core relay.
  socket.on(MESSAGE, (payload) => {
    const target = payload && payload.target;
    if (typeof target !== "string" || (RELAY_CHECK && !sharesRoom(socket, target))) {
      socket.emit("error", { event: MESSAGE, code: "bad-target", message: "target is not a peer" });
      return;
    }
    io.to(target).emit(MESSAGE, { ...payload, source: socket.id });
  });

  socket.on("disconnecting", () => {
    lastMediaState.delete(socket.id);
    for (const roomId of socket.rooms) {
      if (roomId === socket.id) continue;
      socket.to(roomId).emit(PEER_LEFT, { id: socket.id });
      socket.to(roomId).emit("user-disconnected", { id: socket.id });
    }
  });
});

httpServer.listen(PORT, HOST, () => {
  console.log(`node-reference listening on http://${HOST}:${PORT}`);
});

for (const sig of ["SIGINT", "SIGTERM"]) {
  process.on(sig, () => process.exit(0));
}
