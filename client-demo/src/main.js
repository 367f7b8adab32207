// Entry point: reads ?room= / ?name=, finds out whether the server issues dev
// tokens, and wires the lobby form and control bar to a room session
// (signaling connection + local media + peer connections). Owns the
// join / leave / fatal-error lifecycle; everything else lives in the modules.
// The room password goes from the form into the session's memory and nowhere
// else (not the URL, not localStorage, not the console).
import { Signaling } from './signaling.js';
import { RoomSession } from './room.js';
import { LocalMedia } from './media.js';
import { UI } from './ui.js';
import { fetchClientConfig, fetchDevToken } from './server-api.js';
import {
  PASSWORD_REFUSALS, describeError, guestName, inviteUrl, randomRoomId, readUrlParams, setRoomInUrl, tokenExpiry,
} from './util.js';

const NAME_KEY = 'rtcio-demo.name';
// A token this close to its `exp` is not presented again (clocks differ a little).
const TOKEN_MARGIN_MS = 60_000;

const ui = new UI();
const media = new LocalMedia({
  onError: (message) => ui.showError(message),
  onScreenEnded: () => {
    session?.stopScreenShare();
    refreshControls();
  },
});

let session = null;
let signaling = null;
let joining = false;
/** true: server issues dev tokens; false: it answered 404; null: unknown */
let devTokens = null;

function refreshControls() {
  ui.setControls({
    mic: media.micOn,
    cam: media.camOn,
    sharing: Boolean(media.screen),
    hasMic: media.hasMic,
    hasCam: media.hasCam,
    canShare: media.canShareScreen,
  });
}

function readStoredName() {
  try {
    return localStorage.getItem(NAME_KEY) || '';
  } catch {
    return '';
  }
}

function storeName(name) {
  try {
    localStorage.setItem(NAME_KEY, name);
  } catch {
    /* private mode: fine */
  }
}

async function join({ roomId, name, token, password }) {
  if (session || joining) return;
  if (!roomId) {
    ui.showError('Enter a room id (or press "New" for a random one).');
    ui.roomInput.focus();
    return;
  }
  if (!name) {
    name = guestName();
    ui.fillLobby({ name });
  }
  if (!token && devTokens === false) {
    ui.showError('This server needs an access token: paste it into the token field, then join.');
    ui.tokenInput.focus();
    return;
  }
  storeName(name);
  joining = true;
  try {
    ui.setJoining(true);

    // Every dev token is a new user (a random `sub`), and a session is only
    // recovered for the same user: keep one dev token for as long as it is
    // valid, and fetch another only when it is about to expire.
    let devToken = null;
    const getToken = token
      ? async () => token
      : async () => {
          if (devToken && tokenExpiry(devToken) - Date.now() > TOKEN_MARGIN_MS) return devToken;
          const fresh = await fetchDevToken(name);
          if (!fresh) throw new Error('the server does not issue dev tokens; paste an access token');
          devToken = fresh;
          return fresh;
        };

    // The token first: with TURN, /client-config hands out credentials only to
    // a token holder (and keeps the dev token for the socket's connect).
    let iceServers = [];
    try {
      ({ iceServers } = await fetchClientConfig(await getToken()));
    } catch (err) {
      ui.showError(`${describeError(err)}; continuing without STUN/TURN servers.`);
    }

    signaling = new Signaling({
      getToken,
      onState: (state, detail) => {
        ui.setStatus(state, detail);
        // Refused, kicked, or gave up retrying: back to the lobby, errors stay visible.
        if (state === 'disconnected' && session) endSession({ notify: false, status: detail });
      },
      onError: (message) => ui.showError(message),
      onSession: (info) => session?.handleSession(info),
      onEvent: (event, payload) => session?.handleEvent(event, payload),
    });
    const s = new RoomSession({
      roomId,
      name,
      password,
      signaling,
      media,
      ui,
      iceServers,
      // Only once check-room let us in: a locked room never turns the camera on.
      enterRoom: () => enterRoom(s, { roomId, name }),
      onFatal: (why, reason) => {
        endSession({ notify: false, status: why });
        if (PASSWORD_REFUSALS.has(reason)) ui.askForPassword();
      },
    });
    session = s;
  } finally {
    joining = false;
  }
  signaling.connect();
}

async function enterRoom(s, { roomId, name }) {
  await media.start();
  if (session !== s) return false; // ended while the camera started (endSession stopped it)
  ui.setLocalStream(media.camera);
  refreshControls();
  setRoomInUrl(roomId);
  ui.showRoom({ roomId, name, invite: inviteUrl(roomId) });
  return true;
}

function endSession({ notify, status }) {
  const s = session;
  const sig = signaling;
  session = null;
  signaling = null;
  s?.leave({ notify });
  sig?.disconnect();
  media.stopAll();
  ui.setLocalScreen(null);
  ui.setLocalStream(null);
  ui.setJoined(false);
  ui.setRoomLocked(false);
  ui.clearChat();
  ui.showLobby();
  ui.setStatus(status ? 'disconnected' : 'idle', status);
  refreshControls();
}

function boot() {
  const params = readUrlParams();
  const name = params.name || readStoredName();
  ui.fillLobby({ roomId: params.room || randomRoomId(), name });
  ui.setStatus('idle');
  ui.setTokenMode(null);
  ui.showLobby();
  refreshControls();

  ui.onNewRoom(() => ui.fillLobby({ roomId: randomRoomId() }));
  ui.onJoin((form) =>
    join(form).catch((err) => {
      ui.showError(`Joining failed: ${describeError(err)}`);
      endSession({ notify: false, status: 'join failed' });
    }),
  );
  ui.onControl({
    mic: () => {
      session?.toggleMic();
      refreshControls();
    },
    cam: () => {
      session?.toggleCam();
      refreshControls();
    },
    share: async () => {
      if (!session) return;
      ui.setBusy('share', true);
      try {
        if (media.screen) session.stopScreenShare();
        else await session.startScreenShare();
      } finally {
        refreshControls();
      }
    },
    leave: () => endSession({ notify: true }),
  });
  ui.onChatSend((text) => session?.sendChat(text) ?? false);

  // Read-only view of the page's state for debugging and the e2e test.
  Object.defineProperty(window, '__rtcDemo', {
    value: Object.freeze({
      get socketId() { return signaling?.id ?? null; },
      // The id the others know us by (session.id); kept across a recovered reconnect.
      get peerId() { return signaling?.peerId ?? null; },
      // Sessions this join had: fresh ones (the first, and any re-join) and recovered ones.
      get sessions() { return Object.freeze({ ...(signaling?.sessions ?? { fresh: 0, recovered: 0 }) }); },
      get peerConnections() { return session?.linksCreated ?? 0; },
      get connection() { return signaling?.state ?? 'idle'; },
      get roomId() { return session?.roomId ?? null; },
      get joined() { return session?.joined ?? false; },
      get peers() { return session?.describePeers() ?? []; },
      get locked() { return session?.locked ?? false; },
      get chat() { return session?.chat.view() ?? Object.freeze([]); },
      get devTokens() { return devTokens; },
    }),
  });

  // Find out whether we can get a token by ourselves, then maybe auto-join.
  fetchDevToken('probe')
    .then((t) => { devTokens = t !== null; })
    .catch((err) => {
      ui.showError(`Could not ask the server for a dev token: ${describeError(err)}`);
    })
    .finally(() => {
      ui.setTokenMode(devTokens);
      document.body.dataset.ready = 'true';
      if (params.room && name && devTokens) {
        ui.form.requestSubmit();
      } else if (params.room) {
        (devTokens === false ? ui.tokenInput : ui.nameInput).focus();
      }
    });
}

boot();
