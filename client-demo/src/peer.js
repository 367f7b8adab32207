// One RTCPeerConnection to one remote socket, negotiated with the "perfect
// negotiation" pattern so either side can (re)negotiate at any time (screen
// share on/off, ICE restart) without glare: the polite side rolls back its own
// offer when offers cross, the impolite side ignores the other's offer.
// It also buffers remote ICE candidates until a remote description is set.
// All signaling goes through `send(data)` with data = {description} | {candidate}.
import { describeError } from './util.js';

export class PeerLink {
  /**
   * @param {object} opts
   * @param {number} opts.serial      which connection of the room session this is (diagnostics)
   * @param {string} opts.peerId      remote peer id (the `target` of our messages)
   * @param {boolean} opts.polite     existing member answering #rtcio:init-offer = polite
   * @param {RTCIceServer[]} opts.iceServers
   * @param {(data: object) => void} opts.send
   * @param {(ev: RTCTrackEvent) => void} opts.onTrack
   * @param {(state: string) => void} opts.onConnectionState
   * @param {(message: string) => void} opts.onError
   */
  constructor({ serial, peerId, polite, iceServers, send, onTrack, onConnectionState, onError }) {
    this.serial = serial;
    this.peerId = peerId;
    this.polite = polite;
    this.send = send;
    this.onError = onError;
    this.closed = false;

    this.makingOffer = false;
    this.ignoreOffer = false;
    this.settingRemoteAnswer = false;
    this.pendingCandidates = [];
    this.collisions = 0; // offers that crossed ours (diagnostics only)
    this.offersSent = 0; // diagnostics: a renegotiation shows up here
    this.offersReceived = 0;
    // Remote messages are handled strictly one after another, in arrival order.
    this.inbox = Promise.resolve();
    this.screenSender = null;

    const pc = new RTCPeerConnection({ iceServers });
    this.pc = pc;

    pc.onnegotiationneeded = async () => {
      try {
        this.makingOffer = true;
        await pc.setLocalDescription();
        if (this.closed) return;
        if (pc.localDescription.type === 'offer') this.offersSent += 1;
        this.send({ description: pc.localDescription.toJSON() });
      } catch (err) {
        if (!this.closed) this.onError(`Offer to ${this.peerId} failed: ${describeError(err)}`);
      } finally {
        this.makingOffer = false;
      }
    };

    pc.onicecandidate = ({ candidate }) => {
      // null = gathering finished; the remote side needs no explicit end marker.
      if (candidate && !this.closed) this.send({ candidate: candidate.toJSON() });
    };

    pc.ontrack = (ev) => {
      if (!this.closed) onTrack(ev);
    };

    pc.onconnectionstatechange = () => {
      if (this.closed) return;
      onConnectionState(pc.connectionState);
      if (pc.connectionState === 'failed') {
        // Triggers negotiationneeded with an ICE restart offer.
        pc.restartIce();
      }
    };
  }

  /**
   * Sends our camera stream. Missing kinds still get a transceiver tied to the
   * camera stream, so the remote side always sees an audio+video "camera"
   * stream and can tell it apart from a video-only screen share.
   */
  addCameraStream(stream) {
    for (const kind of ['audio', 'video']) {
      const track = stream.getTracks().find((t) => t.kind === kind);
      if (track) this.pc.addTrack(track, stream);
      else this.pc.addTransceiver(kind, { direction: 'sendrecv', streams: [stream] });
    }
  }

  addScreenTrack(track, stream) {
    if (this.closed || this.screenSender) return;
    this.screenSender = this.pc.addTrack(track, stream);
  }

  removeScreenTrack() {
    if (this.closed || !this.screenSender) return;
    this.pc.removeTrack(this.screenSender);
    this.screenSender = null;
  }

  /** data from #rtcio:message: {description} or {candidate}; anything else is ignored. */
  handleSignal(data) {
    this.inbox = this.inbox
      .then(() => this.#handle(data))
      .catch((err) => {
        if (!this.closed) this.onError(`Signaling with ${this.peerId} failed: ${describeError(err)}`);
      });
  }

  async #handle(data) {
    if (this.closed || !data || typeof data !== 'object') return;
    const pc = this.pc;
    const { description, candidate } = data;

    if (description) {
      const readyForOffer =
        !this.makingOffer && (pc.signalingState === 'stable' || this.settingRemoteAnswer);
      if (description.type === 'offer') this.offersReceived += 1;
      const offerCollision = description.type === 'offer' && !readyForOffer;
      if (offerCollision) this.collisions += 1;
      this.ignoreOffer = !this.polite && offerCollision;
      if (this.ignoreOffer) return; // impolite: our own offer wins the glare

      // On a collision the polite side's setRemoteDescription(offer) implicitly
      // rolls back its own pending local offer (the rollback of perfect negotiation).
      this.settingRemoteAnswer = description.type === 'answer';
      try {
        await pc.setRemoteDescription(description);
      } finally {
        this.settingRemoteAnswer = false;
      }
      await this.#flushCandidates();
      if (description.type === 'offer') {
        await pc.setLocalDescription();
        if (!this.closed) this.send({ description: pc.localDescription.toJSON() });
      }
      return;
    }

    if (candidate) {
      if (!pc.remoteDescription) {
        this.pendingCandidates.push(candidate);
        return;
      }
      await this.#addCandidate(candidate);
    }
  }

  async #flushCandidates() {
    const queued = this.pendingCandidates;
    this.pendingCandidates = [];
    for (const candidate of queued) await this.#addCandidate(candidate);
  }

  async #addCandidate(candidate) {
    try {
      await this.pc.addIceCandidate(candidate);
    } catch (err) {
      // Candidates belonging to an offer we deliberately ignored fail; that's expected.
      if (!this.ignoreOffer && !this.closed) throw err;
    }
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    this.pendingCandidates = [];
    this.pc.onnegotiationneeded = null;
    this.pc.onicecandidate = null;
    this.pc.ontrack = null;
    this.pc.onconnectionstatechange = null;
    this.pc.close();
  }
}
