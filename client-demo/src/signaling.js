// The Socket.IO connection to the signaling server, and nothing else.
// It turns socket.io's lifecycle events into one visible connection state
// (connecting / connected / reconnecting / disconnected), reports refusals in
// words, and keeps the session alive across drops (PROTOCOL.md, "Session
// recovery"): every connection opens with `session { id, resume, recovered }`;
// a reconnect presents `auth: { token, resume, received }` and, if the server
// still holds the session, comes back `recovered` under the same peer id with
// every missed event replayed, the room none the wiser. Only a fresh session
// (`recovered: false`) makes the room re-join.
import { io } from 'socket.io-client';
import { describeError } from './util.js';

// Events the room layer listens to. Registered up front so nothing that
// arrives between `connect` and the room's setup is lost.
const ROOM_EVENTS = [
  'user-connected',
  'user-disconnected',
  'media-state',
  'stopScreenShare',
  'room-check-ok',
  'join-ok',
  'join-error',
  'error',
  '#rtcio:init-offer',
  '#rtcio:message',
  '#rtcio:peer-left',
  'chat-message',
];

// Messages held while the connection is down; beyond this the session is unlikely to come back.
const MAX_OUTBOX = 256;

export class Signaling {
  /**
   * @param {object} opts
   * @param {() => Promise<string>} opts.getToken  called on every (re)connect attempt
   * @param {(state: string, detail?: string) => void} opts.onState
   * @param {(message: string) => void} opts.onError
   * @param {(info: {id: string, recovered: boolean, reconnect: boolean}) => void} opts.onSession
   *   after each connection's `session` event; reconnect: an earlier session existed
   * @param {(event: string, payload: any) => void} opts.onEvent
   */
  constructor({ getToken, onState, onError, onSession, onEvent }) {
    this.getToken = getToken;
    this.onState = onState;
    this.onError = onError;
    this.onSession = onSession;
    this.onEvent = onEvent;
    this.socket = null;
    this.state = 'idle';
    this.everConnected = false;
    this.closing = false;
    // Session recovery (see the recipe in PROTOCOL.md).
    this.peerId = null; // our id as everyone else knows it: session.id, not socket.id
    this.resume = undefined; // the single-use credential from the last `session`
    this.received = 0; // events received since the session's first `session`, `session` excluded
    this.sessions = { fresh: 0, recovered: 0 };
    // Room messages emitted while the connection was down: delivered if the
    // session is recovered, dropped if it is not (the room starts over then).
    this.outbox = [];
    this.greeted = false; // this connection's `session` has arrived
  }

  /** The current Socket.IO id (changes on every reconnect; not the peer id). */
  get id() {
    return this.connected ? this.socket.id : null;
  }

  get connected() {
    return Boolean(this.socket?.connected);
  }

  setState(state, detail) {
    this.state = state;
    this.onState(state, detail);
  }

  connect() {
    if (this.socket) return;
    this.closing = false;
    this.everConnected = false;
    this.setState('connecting');

    const socket = io(location.origin, {
      // A function so every reconnect asks for a current token (a dev token
      // fetched an hour ago may have expired by the time we reconnect).
      // It also presents the session to recover, if any.
      auth: (cb) => {
        this.getToken().then(
          (token) => cb(this.resume === undefined ? { token } : { token, resume: this.resume, received: this.received }),
          (err) => {
            this.onError(`Could not get an access token: ${describeError(err)}`);
            cb({});
          },
        );
      },
    });
    this.socket = socket;

    // Registered once, before anything can arrive: counts every event but `session`.
    socket.onAny((event) => {
      if (event !== 'session') this.received += 1;
    });
    socket.on('session', (s) => this.#onSession(s));

    socket.on('connect', () => {
      this.everConnected = true;
      this.setState('connected', socket.io.engine?.transport?.name);
    });

    socket.on('disconnect', (reason) => {
      this.greeted = false;
      if (this.closing || reason === 'io client disconnect') {
        this.setState('disconnected');
        return;
      }
      if (socket.active) {
        this.onError(`Lost the signaling connection (${reason}); reconnecting…`);
        this.setState('reconnecting', reason);
      } else {
        // 'io server disconnect': the server closed us on purpose; no auto-retry.
        this.onError(`The server closed the signaling connection (${reason}).`);
        this.setState('disconnected', reason);
      }
    });

    socket.on('connect_error', (err) => {
      const message = describeError(err);
      if (socket.active) {
        // Transport-level failure: socket.io keeps retrying with backoff.
        this.setState(this.everConnected ? 'reconnecting' : 'connecting', message);
        this.onError(`Cannot reach the signaling server (${message}); retrying…`);
      } else {
        // Refused by the server's auth middleware: no automatic retry.
        this.onError(`The server refused the connection: ${message}`);
        this.setState('disconnected', message);
      }
    });

    socket.io.on('reconnect_attempt', (attempt) => {
      this.setState('reconnecting', `attempt ${attempt}`);
    });
    socket.io.on('reconnect_failed', () => {
      this.onError('Gave up reconnecting to the signaling server.');
      this.setState('disconnected', 'gave up');
    });

    for (const event of ROOM_EVENTS) {
      socket.on(event, (payload) => this.onEvent(event, payload));
    }
  }

  #onSession(s) {
    if (!s || typeof s !== 'object' || typeof s.id !== 'string' || !s.id) {
      this.onError('The server sent a malformed session greeting.');
      return;
    }
    const reconnect = this.peerId !== null;
    const recovered = s.recovered === true && s.id === this.peerId;
    this.resume = typeof s.resume === 'string' ? s.resume : undefined;
    if (!recovered) this.received = 0;
    this.peerId = s.id;
    this.greeted = true;
    if (recovered) {
      this.sessions.recovered += 1;
      // What we said while away goes out now, in order, behind nothing new.
      for (const [event, payload] of this.outbox.splice(0)) this.socket.emit(event, payload);
    } else {
      this.sessions.fresh += 1;
      this.outbox = []; // addressed to a session that no longer exists
    }
    this.onSession({ id: s.id, recovered, reconnect });
  }

  // Emits only while connected; otherwise false. socket.io would buffer and
  // replay anything after any reconnect, even into a fresh session that is
  // about to re-join. With `queue` (relayed signaling, media state) a message
  // emitted while the connection is down waits for the reconnect: it goes out
  // if the session is recovered and is dropped if not.
  emit(event, payload, { queue = false } = {}) {
    if (this.connected && (this.greeted || !queue)) {
      this.socket.emit(event, payload);
      return true;
    }
    if (!queue || !this.socket || this.peerId === null || this.outbox.length >= MAX_OUTBOX) return false;
    this.outbox.push([event, payload]);
    return true;
  }

  disconnect() {
    if (!this.socket) return;
    this.closing = true;
    const socket = this.socket;
    this.socket = null;
    socket.disconnect();
    socket.removeAllListeners();
    socket.io.removeAllListeners();
    this.setState('disconnected');
  }
}
