// Everything that touches the DOM: the lobby form (with its room password),
// the status pill, the lock badge, the error list, the video grid (own preview,
// one tile per peer, screen-share tiles), the chat panel and the control bar. The room logic calls these methods; it never builds
// elements itself. Stable data-testid / data-* attributes make it testable.

const ICONS = {
  mic: '<svg viewBox="0 0 24 24" aria-hidden="true"><rect x="9" y="3" width="6" height="11" rx="3"/><path d="M5.5 11a6.5 6.5 0 0 0 13 0M12 17.5V21M8.5 21h7"/></svg>',
  micOff: '<svg viewBox="0 0 24 24" aria-hidden="true"><rect x="9" y="3" width="6" height="11" rx="3"/><path d="M5.5 11a6.5 6.5 0 0 0 13 0M12 17.5V21M8.5 21h7M4 4l16 16"/></svg>',
  cam: '<svg viewBox="0 0 24 24" aria-hidden="true"><rect x="3" y="6" width="12.5" height="12" rx="2"/><path d="M15.5 10.5 21 7.5v9l-5.5-3z"/></svg>',
  camOff: '<svg viewBox="0 0 24 24" aria-hidden="true"><rect x="3" y="6" width="12.5" height="12" rx="2"/><path d="M15.5 10.5 21 7.5v9l-5.5-3zM3 3l18 18"/></svg>',
  screen: '<svg viewBox="0 0 24 24" aria-hidden="true"><rect x="3" y="4" width="18" height="12" rx="1.5"/><path d="M8 20h8M12 16v4M12 13V7M9.5 9.5 12 7l2.5 2.5"/></svg>',
  leave: '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M3 14.5c5.5-5 12.5-5 18 0l-2.5 2.5-3-1.5v-2.5a10 10 0 0 0-7 0v2.5l-3 1.5z"/></svg>',
};

const STATUS_TEXT = {
  idle: 'not connected',
  connecting: 'connecting…',
  connected: 'connected',
  reconnecting: 'reconnecting…',
  disconnected: 'disconnected',
};

const MAX_ERRORS = 6;
const MAX_CHAT_ITEMS = 200;

function el(tag, attrs = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key === 'html') node.innerHTML = value;
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children) node.append(child);
  return node;
}

function initials(name) {
  const words = String(name || '?').trim().split(/\s+/).filter(Boolean);
  const letters = words.slice(0, 2).map((w) => [...w][0]).join('');
  return (letters || '?').toUpperCase();
}

const onOff = (v) => (v ? 'on' : 'off');

// A peer's screen tiles, or just the one showing stream `streamId`.
const screenSelector = (id, streamId) =>
  `.tile.screen[data-screen-of="${CSS.escape(id)}"]` +
  (streamId === undefined ? '' : `[data-stream-id="${CSS.escape(streamId)}"]`);

export class UI {
  constructor() {
    const $ = (id) => document.getElementById(id);
    this.lobby = $('lobby');
    this.form = $('join-form');
    this.roomInput = $('room-input');
    this.nameInput = $('name-input');
    this.passwordInput = $('password-input');
    this.passwordLabel = $('password-label');
    this.newRoomButton = $('new-room');
    this.tokenBlock = $('token-block');
    this.tokenInput = $('token-input');
    this.tokenNotice = $('token-notice');
    this.tokenSummary = $('token-summary');
    this.joinButton = $('join-button');
    this.roomInfo = $('room-info');
    this.roomLabel = $('room-label');
    this.roomLock = $('room-lock');
    this.inviteInput = $('invite-link');
    this.copyButton = $('copy-link');
    this.status = $('status');
    this.statusText = $('status-text');
    this.errors = $('errors');
    this.grid = $('grid'); // camera tiles
    this.stage = $('stage'); // screen-share tiles, above the cameras
    this.roomView = $('room');
    this.localTile = $('local-tile');
    this.localVideo = $('local-video');
    this.localName = $('local-name');
    this.micButton = $('mic-toggle');
    this.camButton = $('cam-toggle');
    this.shareButton = $('share-toggle');
    this.leaveButton = $('leave-button');
    this.peerCount = $('peer-count');
    this.chatList = $('chat-list');
    this.chatForm = $('chat-form');
    this.chatInput = $('chat-input');
    this.chatSend = $('chat-send');

    this.copyButton.addEventListener('click', () => this.#copyInvite());
    this.passwordInput.addEventListener('input', () => this.#clearPasswordPrompt());
    // Remote videos start muted if the browser blocks autoplay with sound;
    // any click on the page is a user gesture that lets us unmute them.
    document.addEventListener('click', () => this.#unmuteRemotes(), true);
  }

  // ---- lobby -------------------------------------------------------------

  onJoin(handler) {
    this.form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      handler({
        roomId: this.roomInput.value.trim(),
        name: this.nameInput.value.trim(),
        token: this.tokenInput.value.trim(),
        // Held in memory only; the server trims it too (empty = an open room).
        password: this.passwordInput.value.trim(),
      });
    });
  }

  onNewRoom(handler) {
    this.newRoomButton.addEventListener('click', handler);
  }

  fillLobby({ roomId, name }) {
    if (roomId !== undefined) this.roomInput.value = roomId;
    if (name !== undefined) this.nameInput.value = name;
  }

  /** devTokens: true (server issues them), false (404: user must paste), null (unknown) */
  setTokenMode(devTokens) {
    this.tokenBlock.dataset.mode = devTokens === false ? 'required' : 'optional';
    if (devTokens === false) {
      this.tokenBlock.open = true;
      this.tokenInput.required = true;
      this.tokenSummary.textContent = 'Access token (required)';
      this.tokenNotice.hidden = false;
      this.tokenNotice.textContent =
        'This server does not hand out dev tokens. Paste the access token (JWT) you were given to join.';
    } else {
      this.tokenInput.required = false;
      this.tokenSummary.textContent = 'Use my own access token (optional)';
      this.tokenNotice.hidden = true;
    }
  }

  setJoining(busy) {
    this.joinButton.disabled = busy;
    this.joinButton.textContent = busy ? 'Joining…' : 'Join room';
  }

  /** The room is locked (or refused our password): point the user at the password field. */
  askForPassword() {
    this.form.dataset.locked = 'true';
    this.passwordLabel.textContent = 'Room password (this room is locked)';
    this.passwordInput.setAttribute('aria-invalid', 'true');
    this.passwordInput.focus();
    this.passwordInput.select();
  }

  #clearPasswordPrompt() {
    if (this.form.dataset.locked !== 'true') return;
    delete this.form.dataset.locked;
    this.passwordLabel.textContent = 'Room password (optional)';
    this.passwordInput.removeAttribute('aria-invalid');
  }

  showLobby() {
    this.roomView.hidden = true;
    this.roomInfo.hidden = true;
    this.lobby.hidden = false;
    this.setJoining(false);
    document.body.dataset.view = 'lobby';
    document.title = 'rtc.io video room';
  }

  showRoom({ roomId, name, invite }) {
    this.lobby.hidden = true;
    this.roomView.hidden = false;
    this.roomInfo.hidden = false;
    this.roomLabel.textContent = roomId;
    this.roomLabel.title = roomId;
    this.inviteInput.value = invite;
    this.localName.textContent = name ? `You (${name})` : 'You';
    this.localTile.querySelector('.avatar').textContent = initials(name);
    this.#clearPasswordPrompt();
    document.body.dataset.view = 'room';
    document.title = `${roomId} · rtc.io video room`;
  }

  setJoined(joined) {
    document.body.dataset.joined = joined ? 'true' : 'false';
    // Chat only while in the room; a draft survives a reconnect.
    this.chatInput.disabled = !joined;
    this.chatSend.disabled = !joined;
  }

  /** The lock badge in the room header: the room has a password. */
  setRoomLocked(locked) {
    this.roomLock.hidden = !locked;
  }

  async #copyInvite() {
    const link = this.inviteInput.value;
    try {
      await navigator.clipboard.writeText(link);
      this.#flashCopied('Copied!');
    } catch {
      // No clipboard API (plain http, or permission): select it for Ctrl+C.
      this.inviteInput.focus();
      this.inviteInput.select();
      this.#flashCopied('Press Ctrl+C');
    }
  }

  #flashCopied(text) {
    this.copyButton.textContent = text;
    clearTimeout(this.copyTimer);
    this.copyTimer = setTimeout(() => {
      this.copyButton.textContent = 'Copy link';
    }, 1800);
  }

  // ---- status & errors ---------------------------------------------------

  setStatus(state, detail) {
    this.status.dataset.state = state;
    let text = STATUS_TEXT[state] || state;
    if (detail && state !== 'connected') text += ` (${detail})`;
    this.statusText.textContent = text;
    this.status.title = detail ? `${state}: ${detail}` : state;
  }

  /** kind: a tag for dismissErrors(kind), e.g. the lobby's join refusals once we are in. */
  showError(message, { kind } = {}) {
    const last = this.errors.firstElementChild;
    if (last && last.dataset.message === message) {
      const count = Number(last.dataset.count || 1) + 1;
      last.dataset.count = String(count);
      last.querySelector('.count').textContent = `×${count}`;
      last.querySelector('time').textContent = new Date().toLocaleTimeString();
      return;
    }
    const close = el('button', { class: 'dismiss', type: 'button', 'aria-label': 'Dismiss', text: '×' });
    const item = el('div', { class: 'error-item', 'data-testid': 'error-item', 'data-message': message, 'data-kind': kind }, [
      el('time', { text: new Date().toLocaleTimeString() }),
      el('span', { class: 'message', text: message }),
      el('span', { class: 'count' }),
      close,
    ]);
    close.addEventListener('click', () => item.remove());
    this.errors.prepend(item);
    while (this.errors.children.length > MAX_ERRORS) this.errors.lastElementChild.remove();
  }

  dismissErrors(kind) {
    for (const item of this.errors.querySelectorAll(`.error-item[data-kind="${CSS.escape(kind)}"]`)) item.remove();
  }

  // ---- chat --------------------------------------------------------------

  /** handler(text) returns true when the message went out; then the input is cleared. */
  onChatSend(handler) {
    this.chatForm.addEventListener('submit', (ev) => {
      ev.preventDefault();
      if (this.chatInput.disabled) return;
      if (handler(this.chatInput.value)) this.chatInput.value = '';
      this.chatInput.focus();
    });
  }

  /** One chat line; user text only ever goes through textContent. */
  addChatMessage({ id, name, text, mine, at }) {
    const stuck = this.chatList.scrollHeight - this.chatList.scrollTop - this.chatList.clientHeight < 40;
    const when = new Date(at);
    const item = el('li', {
      class: mine ? 'chat-msg mine' : 'chat-msg',
      'data-testid': 'chat-message',
      'data-from': id ?? '',
      'data-mine': mine ? 'true' : 'false',
    }, [
      el('div', { class: 'meta' }, [
        el('span', { class: 'who', 'data-testid': 'chat-name', text: mine ? 'You' : name }),
        el('time', {
          datetime: when.toISOString(),
          text: when.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }),
        }),
      ]),
      el('div', { class: 'text', 'data-testid': 'chat-text', text }),
    ]);
    item.title = `${mine ? `You (${name})` : name}, ${when.toLocaleString()}`;
    this.chatList.append(item);
    while (this.chatList.children.length > MAX_CHAT_ITEMS) this.chatList.firstElementChild.remove();
    // Follow new messages unless the user scrolled up to read older ones.
    if (stuck || mine) this.chatList.scrollTop = this.chatList.scrollHeight;
  }

  clearChat() {
    this.chatList.replaceChildren();
    this.chatInput.value = '';
  }

  // ---- controls ----------------------------------------------------------

  onControl({ mic, cam, share, leave }) {
    this.micButton.addEventListener('click', mic);
    this.camButton.addEventListener('click', cam);
    this.shareButton.addEventListener('click', share);
    this.leaveButton.addEventListener('click', leave);
  }

  setControls({ mic, cam, sharing, hasMic, hasCam, canShare }) {
    const set = (button, on, onLabel, offLabel, onIcon, offIcon, available = true) => {
      button.dataset.state = onOff(on);
      button.setAttribute('aria-pressed', String(!on));
      button.disabled = !available;
      button.innerHTML = `${on ? onIcon : offIcon}<span>${on ? onLabel : offLabel}</span>`;
    };
    set(this.micButton, mic, 'Mute', 'Unmute', ICONS.mic, ICONS.micOff, hasMic);
    set(this.camButton, cam, 'Stop video', 'Start video', ICONS.cam, ICONS.camOff, hasCam);
    this.shareButton.dataset.state = onOff(sharing);
    this.shareButton.setAttribute('aria-pressed', String(sharing));
    this.shareButton.disabled = !canShare;
    this.shareButton.innerHTML = `${ICONS.screen}<span>${sharing ? 'Stop sharing' : 'Share screen'}</span>`;
    this.leaveButton.innerHTML = `${ICONS.leave}<span>Leave</span>`;

    this.localTile.dataset.mic = onOff(mic);
    this.localTile.dataset.cam = onOff(cam);
  }

  setBusy(button, busy) {
    const b = { share: this.shareButton }[button];
    if (b) b.disabled = busy;
  }

  // ---- tiles -------------------------------------------------------------

  setLocalStream(stream) {
    this.localVideo.srcObject = stream;
    this.localVideo.play().catch(() => {});
  }

  #makeBadges() {
    return el('span', { class: 'badges' }, [
      el('span', { class: 'badge mic', 'data-testid': 'mic-badge', title: 'Microphone muted', html: ICONS.micOff }),
      el('span', { class: 'badge cam', 'data-testid': 'cam-badge', title: 'Camera off', html: ICONS.camOff }),
    ]);
  }

  #peerTile(id) {
    return this.grid.querySelector(`.tile.remote[data-peer-id="${CSS.escape(id)}"]`);
  }

  /** Creates (or renames) the tile of a remote peer. */
  upsertPeer(id, name) {
    let tile = this.#peerTile(id);
    const label = name || 'Guest';
    if (!tile) {
      const video = el('video', { autoplay: true, playsinline: true, 'data-testid': 'remote-video' });
      const soundButton = el('button', { class: 'sound-btn', type: 'button', hidden: true, text: 'Click to hear' });
      tile = el('div', {
        class: 'tile remote',
        'data-testid': 'remote-tile',
        'data-peer-id': id,
        'data-mic': 'on',
        'data-cam': 'on',
        'data-conn': 'new',
        'data-video': 'none',
      }, [
        video,
        el('div', { class: 'placeholder' }, [el('div', { class: 'avatar' })]),
        el('div', { class: 'conn', 'data-testid': 'conn-state', text: 'connecting…' }),
        el('div', { class: 'label' }, [el('span', { class: 'name', 'data-testid': 'peer-name' }), this.#makeBadges()]),
        soundButton,
      ]);
      soundButton.addEventListener('click', () => this.#unmuteRemotes());
      video.addEventListener('resize', () => {
        tile.dataset.video = video.videoWidth > 0 ? 'playing' : 'none';
      });
      this.grid.append(tile);
    }
    tile.querySelector('.name').textContent = label;
    tile.querySelector('.avatar').textContent = initials(label);
    tile.dataset.name = label;
    this.#updateCount();
    return tile;
  }

  setPeerMedia(id, { mic, cam }) {
    const tile = this.#peerTile(id);
    if (!tile) return;
    tile.dataset.mic = onOff(mic);
    tile.dataset.cam = onOff(cam);
  }

  setPeerConnection(id, state) {
    const tile = this.#peerTile(id);
    if (!tile) return;
    tile.dataset.conn = state;
    const words = {
      new: 'connecting…', connecting: 'connecting…', connected: '',
      disconnected: 'connection interrupted…', failed: 'connection failed, retrying…', closed: 'closed',
    };
    tile.querySelector('.conn').textContent = words[state] ?? state;
  }

  setPeerStream(id, stream) {
    const tile = this.#peerTile(id) || this.upsertPeer(id, '');
    const video = tile.querySelector('video');
    if (video.srcObject === stream) return;
    video.srcObject = stream;
    this.#playWithSound(tile, video);
  }

  #playWithSound(tile, video) {
    video.muted = false;
    video.play().catch((err) => {
      if (err?.name !== 'NotAllowedError') return;
      // Autoplay with sound blocked until the user interacts: play muted for now.
      video.muted = true;
      video.play().catch(() => {});
      tile.querySelector('.sound-btn').hidden = false;
    });
  }

  #unmuteRemotes() {
    for (const tile of this.grid.querySelectorAll('.tile.remote')) {
      const button = tile.querySelector('.sound-btn');
      if (button.hidden) continue;
      const video = tile.querySelector('video');
      video.muted = false;
      video.play().then(() => { button.hidden = true; }, () => { video.muted = true; });
    }
  }

  removePeer(id) {
    this.#peerTile(id)?.remove();
    this.removeScreens(id);
    this.#updateCount();
  }

  removeAllPeers() {
    for (const tile of this.grid.querySelectorAll('.tile.remote')) tile.remove();
    for (const tile of this.stage.querySelectorAll('.tile.screen')) tile.remove();
    this.#updateCount();
  }

  /** A peer's screen share; several per peer are possible in principle. */
  addScreen(id, stream, ownerName) {
    if (this.stage.querySelector(screenSelector(id, stream.id))) return;
    this.#showPresenting(stream, {
      tileAttrs: {
        class: 'tile screen',
        'data-testid': 'screen-tile',
        'data-screen-of': id,
        'data-stream-id': stream.id,
      },
      videoTestId: 'screen-video',
      label: `${ownerName || 'Guest'} is presenting`,
    });
    this.#updateCount();
  }

  removeScreen(id, streamId) {
    this.stage.querySelector(screenSelector(id, streamId))?.remove();
    this.#updateCount();
  }

  removeScreens(id) {
    for (const tile of this.stage.querySelectorAll(screenSelector(id))) tile.remove();
    this.#updateCount();
  }

  setLocalScreen(stream) {
    this.stage.querySelector('.tile.local-screen')?.remove();
    if (stream) {
      this.#showPresenting(stream, {
        tileAttrs: { class: 'tile local-screen', 'data-testid': 'local-screen' },
        videoTestId: 'local-screen-video',
        label: 'You are presenting',
        first: true,
      });
    }
    this.#updateCount();
  }

  // A muted screen video under a "… presenting" label, put on the stage and started.
  #showPresenting(stream, { tileAttrs, videoTestId, label, first = false }) {
    const video = el('video', { autoplay: true, playsinline: true, muted: true, 'data-testid': videoTestId });
    video.muted = true;
    video.srcObject = stream;
    const tile = el('div', tileAttrs, [
      video,
      el('div', { class: 'label' }, [el('span', { class: 'name', text: label })]),
    ]);
    if (first) this.stage.prepend(tile);
    else this.stage.append(tile);
    video.play().catch(() => {});
  }

  #updateCount() {
    const peers = this.grid.querySelectorAll('.tile.remote').length;
    const screens = this.stage.children.length;
    this.grid.dataset.tiles = String(this.grid.querySelectorAll('.tile').length);
    this.roomView.dataset.screens = String(screens);
    this.peerCount.textContent = peers === 0 ? 'waiting for others…' : `${peers + 1} in the room`;
  }
}
