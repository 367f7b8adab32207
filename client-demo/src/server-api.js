// The two plain HTTP calls the page makes to its own origin before opening the
// signaling socket: ICE server config and (on --dev servers) a throwaway JWT.

// With TURN configured the server mints a short-lived TURN credential for the
// token's user, so the token goes along as a bearer token; without one the
// server answers with its STUN/TURN list as configured (or 401 with TURN).
export async function fetchClientConfig(token) {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const res = await fetch(new URL('/client-config', location.origin), { cache: 'no-store', headers });
  if (!res.ok) {
    const reason = await res.json().then((b) => b?.error, () => null);
    throw new Error(`GET /client-config failed: HTTP ${res.status}${reason ? ` (${reason})` : ''}`);
  }
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
