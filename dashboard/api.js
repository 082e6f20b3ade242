// The admin API, called with the operator's token (see app.js).

// Relative to the page, so the dashboard also works behind a proxy that adds a path prefix.
export const API_BASE = new URL('api/v1/websocket/', document.baseURI);

// ---- admin API ---------------------------------------------------------------------------------

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
  }
}

export const session = { token: '', generation: 0, timer: 0, refused: false };

export async function api(path, init = {}) {
  const headers = { Authorization: `Bearer ${session.token}` };
  if (init.body) headers['Content-Type'] = 'application/json';
  let res;
  try {
    res = await fetch(new URL(path, API_BASE), { ...init, headers, cache: 'no-store', credentials: 'omit' });
  } catch {
    throw new ApiError(0, 'the sidecar is unreachable');
  }
  const body = await res.json().catch(() => null);
  if (!res.ok) throw new ApiError(res.status, body?.error ?? res.statusText);
  return body;
}

