// The in-call chat, without DOM or socket: checks what the user typed, turns a
// received `chat-message` into a log entry (the sender named by the room's
// roster, else by the payload) and keeps this session's log. room.js sends and
// receives, ui.js renders. The server neither stores nor replays messages.

export const MAX_CHAT_CHARS = 1000;
const MAX_NAME_CHARS = 64;
const MAX_LOG = 500;
// A sender's clock is believed only this far; beyond it we show when it arrived.
const MAX_CLOCK_SKEW_MS = 5 * 60_000;

/** What the user typed -> { text } to send, { error } in words, or {} (nothing to send). */
export function checkChatText(raw) {
  const text = String(raw ?? '').trim();
  if (!text) return {};
  if (text.length > MAX_CHAT_CHARS) {
    return { error: `That message is ${text.length} characters long; the limit is ${MAX_CHAT_CHARS}.` };
  }
  return { text };
}

export class ChatLog {
  #entries = [];

  /** Adds {id, name, text, mine, at} and returns the stored (frozen) entry. */
  add({ id, name, text, mine, at }) {
    const entry = Object.freeze({ id, name, text, mine: Boolean(mine), at });
    this.#entries.push(entry);
    if (this.#entries.length > MAX_LOG) this.#entries.shift();
    return entry;
  }

  /**
   * A `chat-message` from peer `payload.id` -> entry, or null when it carries no text.
   * The roster name comes from the server (a token's name wins there), so it is
   * preferred over the name the sender put in the payload.
   */
  receive(payload, rosterName) {
    if (typeof payload.text !== 'string') return null;
    const text = payload.text.trim().slice(0, MAX_CHAT_CHARS);
    if (!text) return null;
    const claimed = typeof payload.name === 'string' ? payload.name.trim().slice(0, MAX_NAME_CHARS) : '';
    const now = Date.now();
    const sentAt = Number(payload.sentAt);
    const at = Number.isFinite(sentAt) && Math.abs(sentAt - now) < MAX_CLOCK_SKEW_MS ? sentAt : now;
    return this.add({ id: payload.id, name: rosterName || claimed || 'Guest', text, mine: false, at });
  }

  /** Read-only copy for window.__rtcDemo: [{id, name, text, mine}], oldest first. */
  view() {
    return Object.freeze(this.#entries.map(({ id, name, text, mine }) => Object.freeze({ id, name, text, mine })));
  }
}
