// One room session: maps the rtc.io wire protocol onto peer connections and
// tiles. Roster from `user-connected`, leaves from `#rtcio:peer-left` /
// `user-disconnected`, handshakes from `#rtcio:init-offer` (we are the existing,
// polite side) or lazily from the first relayed message of an unknown peer
// (we are the newcomer, impolite side), mute badges from `media-state`,
// screen tiles from video-only remote streams and `stopScreenShare`, chat
// from `chat-message`.
// Getting in: `check-room` first (a locked room is known before the camera
// starts), then `join-room` with the room password, which lives only in this
// object's memory. After a signaling drop the session is usually recovered
// (same peer id, still in the room, missed events replayed): then nothing here
// changes, the peer connections carry on. Only a reconnect that comes back as
// a fresh session (new peer id; the others saw us leave) closes every peer and
// re-joins, password included.
import { PeerLink } from './peer.js';
import { ChatLog, checkChatText } from './chat.js';
import { describeError, describeJoinError } from './util.js';

const isId = (v) => typeof v === 'string' && v.length > 0;

// A server without `check-room` may not answer it at all; then join-room decides.
const CHECK_TIMEOUT_MS = 5_000;

export class RoomSession {
  #password;

  /**
   * @param {object} opts
   * @param {string} opts.password  '' for none; sent with check-room and every join-room
   * @param {() => Promise<boolean>} opts.enterRoom  once, when the server first lets us in:
   *   starts the camera and shows the room; false if the session ended meanwhile
   * @param {(why: string, reason?: string) => void} opts.onFatal  reason: the join-error reason
   */
  constructor({ roomId, name, password, signaling, media, ui, iceServers, enterRoom, onFatal }) {
    this.roomId = roomId;
    this.name = name;
    this.#password = password || '';
    this.signaling = signaling;
    this.media = media;
    this.ui = ui;
    this.iceServers = iceServers;
    this.enterRoom = enterRoom;
    this.onFatal = onFatal;
    this.joined = false;
    this.closed = false;
    this.entered = null; // the enterRoom() promise, once started
    // 'checking' (check-room sent) -> 'joining' (join-room sent) -> 'joined'; again on each reconnect
    this.phase = 'idle';
    this.attempt = 0; // one per (re)join; stale async steps compare against it
    this.unsent = false; // our last check-room / join-room could not go out (connection down)
    this.linksCreated = 0; // RTCPeerConnections made in this session (diagnostics)
    this.checkTimer = null;
    this.checkAnswered = false;
    this.passwordRequired = false;
    this.locked = false;
    this.chat = new ChatLog();
    /** @type {Map<string, {id: string, name: string, link: PeerLink|null, mic: boolean, cam: boolean, cameraStreamId: string|null, screens: Map<string, MediaStream>}>} */
    this.peers = new Map();
    // media-state that arrived before the matching user-connected (not expected, but harmless)
    this.earlyMedia = new Map();
  }

  // ---- signaling lifecycle ----------------------------------------------

  /** After each connection's `session`: see Signaling. */
  handleSession({ recovered, reconnect }) {
    if (this.closed) return;
    if (recovered) {
      // Same peer id, same room, the others noticed nothing, and what we missed
      // is being replayed: the call goes on untouched. Only a check-room or
      // join-room that never left (it was due while we were away) is redone.
      if (this.unsent && !this.joined) this.#restart();
      return;
    }
    if (reconnect) {
      // A new peer id, and the others dropped (or will drop) the old one: start over.
      this.#closeAllPeers();
    }
    this.#restart();
  }

  #restart() {
    this.joined = false;
    this.ui.setJoined(false);
    this.attempt += 1;
    this.#check();
  }

  #withPassword(payload) {
    return this.#password ? { ...payload, password: this.#password } : payload;
  }

  #check() {
    const attempt = this.attempt;
    this.phase = 'checking';
    this.checkAnswered = false;
    this.passwordRequired = false;
    clearTimeout(this.checkTimer);
    this.checkTimer = setTimeout(() => {
      if (attempt === this.attempt) this.#join();
    }, CHECK_TIMEOUT_MS);
    this.unsent = !this.signaling.emit('check-room', this.#withPassword({ roomId: this.roomId }));
  }

  // The check passed (or the server cannot check): camera on, room shown, join.
  async #join() {
    if (this.closed || this.phase !== 'checking') return;
    clearTimeout(this.checkTimer);
    this.phase = 'joining';
    const attempt = this.attempt;
    try {
      this.entered ??= this.enterRoom();
      if (!(await this.entered)) return;
    } catch (err) {
      if (this.closed) return;
      this.ui.showError(`Joining failed: ${describeError(err)}`);
      this.onFatal('join failed');
      return;
    }
    if (this.closed || attempt !== this.attempt) return; // a reconnect started over
    this.unsent = !this.signaling.emit('join-room', this.#withPassword({ roomId: this.roomId, name: this.name }));
  }

  handleEvent(event, payload) {
    if (this.closed) return;
    const p = payload && typeof payload === 'object' ? payload : {};
    switch (event) {
      case 'user-connected':
        return this.#onUserConnected(p);
      case 'media-state':
        return this.#onMediaState(p);
      case 'room-check-ok':
        return this.#onCheckOk(p);
      case 'join-ok':
        return this.#onJoinOk(p);
      case 'join-error':
        return this.#onJoinError(p);
      case 'error':
        return this.#onServerError(p);
      case 'chat-message':
        return this.#onChatMessage(p);
      case '#rtcio:init-offer':
        return this.#onInitOffer(p);
      case '#rtcio:message':
        return this.#onMessage(p);
      case '#rtcio:peer-left':
      case 'user-disconnected':
        if (isId(p.id)) this.#removePeer(p.id);
        return;
      case 'stopScreenShare':
        return this.#onStopScreenShare(p);
      default:
        return;
    }
  }

  #isSelf(id) {
    return id === this.signaling.peerId;
  }

  #onUserConnected({ id, name }) {
    if (!isId(id) || this.#isSelf(id)) return;
    const peer = this.#ensurePeer(id);
    peer.name = typeof name === 'string' && name ? name : peer.name;
    this.ui.upsertPeer(id, peer.name);
    const early = this.earlyMedia.get(id);
    if (early) {
      this.earlyMedia.delete(id);
      this.#applyMedia(peer, early);
    }
  }

  #onMediaState({ id, roomId, mic, cam }) {
    if (roomId !== this.roomId || !isId(id) || this.#isSelf(id)) return;
    const state = { mic: mic !== false, cam: cam !== false };
    const peer = this.peers.get(id);
    if (peer) this.#applyMedia(peer, state);
    else this.earlyMedia.set(id, state);
  }

  #applyMedia(peer, { mic, cam }) {
    peer.mic = mic;
    peer.cam = cam;
    this.ui.setPeerMedia(peer.id, { mic, cam });
  }

  // It may come after the timeout already moved on to the join (a slow server);
  // it still precedes our join's answer, so it still counts for the lock badge.
  #onCheckOk({ roomId, passwordRequired }) {
    if (roomId !== this.roomId || (this.phase !== 'checking' && this.phase !== 'joining')) return;
    this.checkAnswered = true;
    this.passwordRequired = passwordRequired === true;
    this.#join();
  }

  #onJoinOk({ roomId }) {
    if (roomId !== this.roomId) return;
    clearTimeout(this.checkTimer);
    this.phase = 'joined';
    this.joined = true;
    // Locked: check-room said so, or nobody was here and our password became the room's.
    // (user-connected for every member already here arrives before join-ok.)
    this.locked = this.checkAnswered && (this.passwordRequired || (Boolean(this.#password) && this.peers.size === 0));
    this.ui.setRoomLocked(this.locked);
    this.ui.dismissErrors('join'); // the lobby's "locked" / "wrong password" are settled
    this.ui.setJoined(true);
    // Tell the room (and the server's cache, for later joiners) our mute state.
    this.#emitMediaState();
  }

  // From check-room or join-room. Before we are in, it is about our one room
  // even if the server echoes a shortened room id.
  #onJoinError(p) {
    const { roomId, reason } = p;
    this.ui.showError(describeJoinError(p, roomId ?? this.roomId), { kind: 'join' });
    if (this.joined && roomId !== undefined && roomId !== this.roomId) return;
    clearTimeout(this.checkTimer);
    this.onFatal(`join refused: ${reason ? String(reason) : 'unknown reason'}`, reason);
  }

  #onServerError(p) {
    if (p.event === 'check-room' && this.phase === 'checking') {
      // A server that cannot check (e.g. unknown-event): the join itself decides.
      this.#join();
      return;
    }
    if (p.event === 'chat-message') {
      const why = {
        'not-in-room': 'you are not in the room right now',
        'rate-limited': 'too many messages, slow down',
        'unknown-event': 'this server has no chat',
      }[p.code] ?? p.message ?? p.code ?? 'refused';
      this.ui.showError(`A chat message was not delivered: ${why}.`);
      return;
    }
    this.ui.showError(
      `Server rejected "${p.event ?? '?'}": ${p.message ?? 'no message'}${p.code ? ` [${p.code}]` : ''}`,
    );
  }

  #onChatMessage(p) {
    if (p.roomId !== this.roomId || !isId(p.id) || this.#isSelf(p.id)) return;
    const entry = this.chat.receive(p, this.peers.get(p.id)?.name);
    if (entry) this.ui.addChatMessage(entry);
  }

  #onInitOffer({ source }) {
    if (!isId(source) || this.#isSelf(source)) return;
    const peer = this.#ensurePeer(source);
    // The server asks us, the existing member, to start a fresh handshake.
    peer.link?.close();
    this.#createLink(peer, true);
  }

  #onMessage({ source, data }) {
    if (!isId(source) || this.#isSelf(source) || !data || typeof data !== 'object') return;
    if (!data.description && !data.candidate) return; // e.g. rtc.io {mid} metadata: not used here
    let peer = this.peers.get(source);
    if (!peer) {
      // Only an offer may introduce a peer we never heard of; stray
      // candidates from a peer that already left are dropped.
      if (data.description?.type !== 'offer') return;
      peer = this.#ensurePeer(source);
      this.ui.upsertPeer(source, peer.name);
    }
    // We are the newcomer: the existing member offers, we create lazily (impolite).
    if (!peer.link) this.#createLink(peer, false);
    peer.link.handleSignal(data);
  }

  #onStopScreenShare({ id, roomId }) {
    if (roomId !== undefined && roomId !== this.roomId) return;
    if (!isId(id)) return;
    this.peers.get(id)?.screens.clear();
    this.ui.removeScreens(id);
  }

  // ---- peers --------------------------------------------------------------

  #ensurePeer(id) {
    let peer = this.peers.get(id);
    if (!peer) {
      peer = { id, name: '', link: null, mic: true, cam: true, cameraStreamId: null, screens: new Map() };
      this.peers.set(id, peer);
    }
    return peer;
  }

  #createLink(peer, polite) {
    this.linksCreated += 1;
    const link = new PeerLink({
      serial: this.linksCreated,
      peerId: peer.id,
      polite,
      iceServers: this.iceServers,
      send: (data) =>
        this.signaling.emit('#rtcio:message', { source: this.signaling.peerId, target: peer.id, data }, { queue: true }),
      onTrack: (ev) => {
        if (peer.link === link) this.#onTrack(peer, ev);
      },
      onConnectionState: (state) => {
        if (peer.link === link) this.ui.setPeerConnection(peer.id, state);
      },
      onError: (message) => this.ui.showError(`${peer.name || peer.id}: ${message}`),
    });
    peer.link = link;
    peer.cameraStreamId = null;
    link.addCameraStream(this.media.camera);
    const screenTrack = this.media.screen?.getVideoTracks()[0];
    if (screenTrack) link.addScreenTrack(screenTrack, this.media.screen);
    this.ui.setPeerConnection(peer.id, 'new');
  }

  // The camera stream always carries an audio m-line (see PeerLink.addCameraStream);
  // a video-only stream is a screen share.
  #onTrack(peer, { track, streams }) {
    const stream = streams[0] ?? new MediaStream([track]);
    const isCamera =
      stream.id === peer.cameraStreamId ||
      (peer.cameraStreamId === null && stream.getAudioTracks().length > 0);
    if (isCamera) {
      peer.cameraStreamId = stream.id;
      this.ui.setPeerStream(peer.id, stream);
      return;
    }
    if (peer.screens.has(stream.id)) return;
    peer.screens.set(stream.id, stream);
    this.ui.addScreen(peer.id, stream, peer.name);
    stream.addEventListener('removetrack', () => {
      if (stream.getTracks().length > 0) return;
      peer.screens.delete(stream.id);
      this.ui.removeScreen(peer.id, stream.id);
    });
  }

  #removePeer(id) {
    const peer = this.peers.get(id);
    if (peer) {
      peer.link?.close();
      this.peers.delete(id);
    }
    this.earlyMedia.delete(id);
    this.ui.removePeer(id);
  }

  #closeAllPeers() {
    for (const peer of this.peers.values()) peer.link?.close();
    this.peers.clear();
    this.earlyMedia.clear();
    this.ui.removeAllPeers();
  }

  // ---- local actions --------------------------------------------------------

  #emitMediaState() {
    this.signaling.emit('media-state', {
      roomId: this.roomId,
      mic: this.media.micOn,
      cam: this.media.camOn,
    }, { queue: true });
  }

  toggleMic() {
    this.media.setMic(!this.media.micOn);
    if (this.joined) this.#emitMediaState();
  }

  toggleCam() {
    this.media.setCam(!this.media.camOn);
    if (this.joined) this.#emitMediaState();
  }

  async startScreenShare() {
    const track = await this.media.startScreen();
    if (!track || this.closed) {
      if (track) this.media.stopScreen();
      return;
    }
    this.ui.setLocalScreen(this.media.screen);
    for (const peer of this.peers.values()) peer.link?.addScreenTrack(track, this.media.screen);
  }

  stopScreenShare() {
    if (!this.media.screen) return;
    for (const peer of this.peers.values()) peer.link?.removeScreenTrack();
    this.media.stopScreen();
    this.ui.setLocalScreen(null);
    this.signaling.emit('stopScreenShare', { roomId: this.roomId }, { queue: true });
  }

  /** Sends a chat message and shows it at once; false (with the reason shown) if it did not go out. */
  sendChat(raw) {
    const { text, error } = checkChatText(raw);
    if (error) this.ui.showError(error);
    if (!text) return false;
    const sentAt = Date.now();
    if (!this.joined || !this.signaling.emit('chat-message', { roomId: this.roomId, text, name: this.name, sentAt })) {
      this.ui.showError('Not connected to the room right now; the message was not sent.');
      return false;
    }
    this.ui.addChatMessage(this.chat.add({ id: this.signaling.peerId, name: this.name, text, mine: true, at: sentAt }));
    return true;
  }

  /** Leaves the room (telling the server if we still can) and closes every peer connection. */
  leave({ notify = true } = {}) {
    if (this.closed) return;
    clearTimeout(this.checkTimer);
    if (this.media.screen) this.stopScreenShare();
    if (notify) this.signaling.emit('leave-room', { roomId: this.roomId });
    this.closed = true;
    this.joined = false;
    this.#closeAllPeers();
  }

  describePeers() {
    return [...this.peers.values()].map((p) => ({
      id: p.id,
      name: p.name,
      mic: p.mic,
      cam: p.cam,
      polite: p.link?.polite ?? null,
      link: p.link?.serial ?? null, // which RTCPeerConnection of this session (1, 2, ...)
      offersSent: p.link?.offersSent ?? 0,
      offersReceived: p.link?.offersReceived ?? 0,
      connectionState: p.link?.pc.connectionState ?? null,
      offerCollisions: p.link?.collisions ?? 0,
      screens: p.screens.size,
    }));
  }
}
