// Small helpers with no DOM or network side effects: room ids, guest names,
// reading URL parameters, errors in words. Kept apart so the other modules stay
// about one thing.

const BASE32 = 'abcdefghijklmnopqrstuvwxyz234567';

// Unguessable room id: 80 random bits from the browser's CSPRNG, base32 (16 chars).
export function randomRoomId() {
  const buf = crypto.getRandomValues(new Uint8Array(10));
  let bits = 0;
  let value = 0;
  let out = '';
  for (const byte of buf) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      out += BASE32[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) out += BASE32[(value << (5 - bits)) & 31];
  return out;
}

export function guestName() {
  const n = crypto.getRandomValues(new Uint16Array(1))[0] % 10000;
  return `Guest ${String(n).padStart(4, '0')}`;
}

// A JWT's `exp` in ms since the epoch (read, not verified: the server does
// that); 0 when it has none or cannot be read.
export function tokenExpiry(jwt) {
  try {
    const part = jwt.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const { exp } = JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), '=')));
    return typeof exp === 'number' ? exp * 1000 : 0;
  } catch {
    return 0;
  }
}

export function readUrlParams() {
  const params = new URLSearchParams(location.search);
  return { room: params.get('room'), name: params.get('name') };
}

// URL someone else can open to land in the same room.
export function inviteUrl(roomId) {
  const url = new URL(location.href);
  url.search = '';
  url.hash = '';
  url.searchParams.set('room', roomId);
  return url.toString();
}

// Put ?room= in the address bar without reloading, so the tab itself is shareable.
export function setRoomInUrl(roomId) {
  const url = new URL(location.href);
  url.searchParams.set('room', roomId);
  url.searchParams.delete('name');
  history.replaceState(null, '', url);
}

export function describeError(err) {
  if (!err) return 'unknown error';
  if (typeof err === 'string') return err;
  const name = err.name && err.name !== 'Error' ? `${err.name}: ` : '';
  return `${name}${err.message || String(err)}`;
}

// join-error reasons (PROTOCOL.md) that the room's password settles: the lobby
// asks for the password again.
export const PASSWORD_REFUSALS = new Set(['password-required', 'wrong-password', 'invalid-password', 'rate-limited']);

const JOIN_REFUSALS = {
  'invalid-room': 'the room id must be 1 to 128 characters without control characters',
  'invalid-name': 'the name must be at most 64 characters',
  'invalid-password': 'the room password must be at most 256 characters',
  forbidden: 'your access token does not allow this room',
  'room-full': 'the room is full',
  unavailable: 'the server cannot reach the room right now; try again in a moment',
};

// A join-error (from join-room or check-room) in words.
export function describeJoinError({ reason, message, retryAfterMs }, roomId) {
  switch (reason) {
    case 'password-required':
      return 'This room is locked. Enter its password.';
    case 'wrong-password':
      return 'Wrong password for this room. Check it and try again.';
    case 'rate-limited': {
      const seconds = Math.ceil(Number(retryAfterMs) / 1000);
      const wait = seconds > 0 ? `${seconds} second${seconds === 1 ? '' : 's'}` : 'a minute';
      return `Too many attempts to join this room. Wait ${wait}, then try again.`;
    }
    default: {
      const shown = String(roomId ?? '');
      const short = shown.length > 40 ? `${shown.slice(0, 40)}…` : shown;
      const why = JOIN_REFUSALS[reason] ?? (message ? String(message).replace(/\.$/, '') : reason ? String(reason) : 'unknown reason');
      return `Could not join room "${short}": ${why}.`;
    }
  }
}
