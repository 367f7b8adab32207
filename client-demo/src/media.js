// Local capture: the camera/mic stream (with graceful fallbacks when a device
// is missing or refused), mic/cam toggles that disable the tracks, and the
// screen-share stream. Knows nothing about peers or signaling.
import { describeError } from './util.js';

const CAMERA_CONSTRAINTS = {
  video: { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 24 } },
  audio: { echoCancellation: true, noiseSuppression: true },
};

export class LocalMedia {
  constructor({ onError, onScreenEnded }) {
    this.onError = onError;
    this.onScreenEnded = onScreenEnded;
    // Always a stream, possibly without tracks: peers key "camera" by its id.
    this.camera = new MediaStream();
    this.screen = null;
    this.micOn = false;
    this.camOn = false;
    // stopAll() bumps it: a capture still in flight then throws away what it gets.
    this.generation = 0;
    this.starting = null;
  }

  get hasMic() {
    return this.camera.getAudioTracks().length > 0;
  }

  get hasCam() {
    return this.camera.getVideoTracks().length > 0;
  }

  get canShareScreen() {
    return Boolean(navigator.mediaDevices?.getDisplayMedia);
  }

  /** Asks for camera+mic, then each alone; joins receive-only if all fail. One capture at a time. */
  start() {
    if (!this.starting) {
      const p = this.#capture(this.generation);
      const done = () => {
        if (this.starting === p) this.starting = null;
      };
      p.then(done, done);
      this.starting = p;
    }
    return this.starting;
  }

  async #capture(generation) {
    if (this.camera.getTracks().length) return;
    if (!navigator.mediaDevices?.getUserMedia) {
      this.onError('This browser cannot capture camera/microphone here (needs https or localhost). Joining receive-only.');
      return;
    }
    const attempts = [
      CAMERA_CONSTRAINTS,
      { video: CAMERA_CONSTRAINTS.video, audio: false },
      { video: false, audio: CAMERA_CONSTRAINTS.audio },
    ];
    let firstError = null;
    for (const constraints of attempts) {
      try {
        const stream = await navigator.mediaDevices.getUserMedia(constraints);
        if (generation !== this.generation) {
          // stopAll() ran meanwhile (the user left, or the join was refused).
          stream.getTracks().forEach((t) => t.stop());
          return;
        }
        for (const track of stream.getTracks()) this.camera.addTrack(track);
        break;
      } catch (err) {
        if (generation !== this.generation) return;
        firstError ??= err;
        if (err?.name === 'NotAllowedError') break; // refused: asking again won't help
      }
    }
    if (firstError && !this.camera.getTracks().length) {
      this.onError(`No camera or microphone (${describeError(firstError)}). Joining receive-only.`);
    } else if (firstError) {
      const missing = this.hasCam ? 'microphone' : 'camera';
      this.onError(`No ${missing} available (${describeError(firstError)}).`);
    }
    this.micOn = this.hasMic;
    this.camOn = this.hasCam;
  }

  setMic(on) {
    this.micOn = Boolean(on) && this.hasMic;
    for (const t of this.camera.getAudioTracks()) t.enabled = this.micOn;
  }

  setCam(on) {
    this.camOn = Boolean(on) && this.hasCam;
    for (const t of this.camera.getVideoTracks()) t.enabled = this.camOn;
  }

  /** Returns the screen video track, or null if the user cancelled. */
  async startScreen() {
    if (this.screen) return this.screen.getVideoTracks()[0];
    let stream;
    try {
      stream = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
    } catch (err) {
      if (err?.name !== 'NotAllowedError' && err?.name !== 'AbortError') {
        this.onError(`Screen share failed: ${describeError(err)}`);
      }
      return null;
    }
    const track = stream.getVideoTracks()[0];
    if (!track) {
      stream.getTracks().forEach((t) => t.stop());
      this.onError('Screen share produced no video track.');
      return null;
    }
    track.contentHint = 'detail';
    // The browser's own "Stop sharing" bar ends the track.
    track.addEventListener('ended', () => {
      if (this.screen === stream) this.onScreenEnded();
    });
    this.screen = stream;
    return track;
  }

  stopScreen() {
    const stream = this.screen;
    this.screen = null;
    stream?.getTracks().forEach((t) => t.stop());
  }

  stopAll() {
    this.generation += 1;
    this.starting = null;
    this.stopScreen();
    for (const t of this.camera.getTracks()) {
      t.stop();
      this.camera.removeTrack(t);
    }
    this.micOn = false;
    this.camOn = false;
  }
}
