// Small helpers with no DOM or network side effects: room ids, guest names,
// reading URL parameters. Kept apart so the other modules stay about one thing.

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
