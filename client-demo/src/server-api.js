// The two plain HTTP calls the page makes to its own origin before opening the
// signaling socket: ICE server config and (on --dev servers) a throwaway JWT.

export async function fetchClientConfig() {
  const res = await fetch(new URL('/client-config', location.origin), { cache: 'no-store' });
  if (!res.ok) throw new Error(`GET /client-config failed: HTTP ${res.status}`);
  const body = await res.json();
  const iceServers = Array.isArray(body?.iceServers) ? body.iceServers : [];
  return { iceServers };
}

// Returns the token, or null when the server does not issue dev tokens (404),
// in which case the user has to paste one.
export async function fetchDevToken(name) {
  const url = new URL('/dev/token', location.origin);
  url.searchParams.set('name', name);
  const res = await fetch(url, { cache: 'no-store' });
  if (res.status === 404) return null;
  if (!res.ok) throw new Error(`GET /dev/token failed: HTTP ${res.status}`);
  const body = await res.json();
  if (typeof body?.token !== 'string' || !body.token) {
    throw new Error('GET /dev/token returned no token');
  }
  return body.token;
}
