// The Socket.IO connection to the signaling server, and nothing else.
// It turns socket.io's lifecycle events into one visible connection state
// (connecting / connected / reconnecting / disconnected), reports refusals in
// words, and tells the room when a (re)connect happened so it can re-join:
// the server forgets room membership when a socket reconnects.
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

export class Signaling {
  /**
   * @param {object} opts
   * @param {() => Promise<string>} opts.getToken  called on every (re)connect attempt
   * @param {(state: string, detail?: string) => void} opts.onState
   * @param {(message: string) => void} opts.onError
   * @param {(info: {reconnect: boolean, id: string}) => void} opts.onConnect
   * @param {(event: string, payload: any) => void} opts.onEvent
   */
  constructor({ getToken, onState, onError, onConnect, onEvent }) {
    this.getToken = getToken;
    this.onState = onState;
    this.onError = onError;
    this.onConnect = onConnect;
    this.onEvent = onEvent;
    this.socket = null;
    this.state = 'idle';
    this.everConnected = false;
    this.closing = false;
  }

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
      auth: (cb) => {
        this.getToken().then(
          (token) => cb({ token }),
          (err) => {
            this.onError(`Could not get an access token: ${describeError(err)}`);
            cb({});
          },
        );
      },
    });
    this.socket = socket;

    socket.on('connect', () => {
      const reconnect = this.everConnected;
      this.everConnected = true;
      this.setState('connected', socket.io.engine?.transport?.name);
      this.onConnect({ reconnect, id: socket.id });
    });

    socket.on('disconnect', (reason) => {
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

  // Emits only while connected. socket.io would otherwise buffer and replay
  // stale messages after a reconnect, on top of the fresh join we send then.
  emit(event, payload) {
    if (!this.connected) return false;
    this.socket.emit(event, payload);
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
