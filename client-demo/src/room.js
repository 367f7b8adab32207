// One room session: maps the rtc.io wire protocol onto peer connections and
// tiles. Roster from `user-connected`, leaves from `#rtcio:peer-left` /
// `user-disconnected`, handshakes from `#rtcio:init-offer` (we are the existing,
// polite side) or lazily from the first relayed message of an unknown peer
// (we are the newcomer, impolite side), mute badges from `media-state`,
// screen tiles from video-only remote streams and `stopScreenShare`.
// It re-joins after every signaling reconnect (the server forgets us).
import { PeerLink } from './peer.js';

const isId = (v) => typeof v === 'string' && v.length > 0;

export class RoomSession {
  constructor({ roomId, name, signaling, media, ui, iceServers, onFatal }) {
    this.roomId = roomId;
    this.name = name;
    this.signaling = signaling;
    this.media = media;
    this.ui = ui;
    this.iceServers = iceServers;
    this.onFatal = onFatal;
    this.joined = false;
    this.closed = false;
    /** @type {Map<string, {id: string, name: string, link: PeerLink|null, mic: boolean, cam: boolean, cameraStreamId: string|null, screens: Map<string, MediaStream>}>} */
    this.peers = new Map();
    // media-state that arrived before the matching user-connected (not expected, but harmless)
    this.earlyMedia = new Map();
  }

  // ---- signaling lifecycle ----------------------------------------------

  handleConnect({ reconnect }) {
    if (this.closed) return;
    if (reconnect) {
      // New socket id, and the others already dropped our old one: start over.
      this.#closeAllPeers();
    }
    this.joined = false;
    this.ui.setJoined(false);
    this.signaling.emit('join-room', { roomId: this.roomId, name: this.name });
  }

  handleEvent(event, payload) {
    if (this.closed) return;
    const p = payload && typeof payload === 'object' ? payload : {};
    switch (event) {
      case 'user-connected':
        return this.#onUserConnected(p);
      case 'media-state':
        return this.#onMediaState(p);
      case 'join-ok':
        return this.#onJoinOk(p);
      case 'join-error':
        return this.#onJoinError(p);
      case 'error':
        return this.ui.showError(
          `Server rejected "${p.event ?? '?'}": ${p.message ?? 'no message'}${p.code ? ` [${p.code}]` : ''}`,
        );
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
    return id === this.signaling.id;
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

  #onJoinOk({ roomId }) {
    if (roomId !== this.roomId) return;
    this.joined = true;
    this.ui.setJoined(true);
    // Tell the room (and the server's cache, for later joiners) our mute state.
    this.#emitMediaState();
  }

  #onJoinError({ roomId, reason }) {
    const why = reason ? String(reason) : 'unknown reason';
    const shown = String(roomId ?? this.roomId);
    const short = shown.length > 40 ? `${shown.slice(0, 40)}…` : shown;
    this.ui.showError(`Could not join room "${short}": ${why}`);
    if (roomId === undefined || roomId === this.roomId) this.onFatal(`join refused: ${why}`);
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
    const link = new PeerLink({
      peerId: peer.id,
      polite,
      iceServers: this.iceServers,
      send: (data) =>
        this.signaling.emit('#rtcio:message', { source: this.signaling.id, target: peer.id, data }),
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
    });
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
    this.signaling.emit('stopScreenShare', { roomId: this.roomId });
  }

  /** Leaves the room (telling the server if we still can) and closes every peer connection. */
  leave({ notify = true } = {}) {
    if (this.closed) return;
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
      connectionState: p.link?.pc.connectionState ?? null,
      offerCollisions: p.link?.collisions ?? 0,
      screens: p.screens.size,
    }));
  }
}
