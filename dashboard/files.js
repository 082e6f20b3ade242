// The files panel: a project's files, listed and downloaded through the admin API (see app.js).

import { API_BASE, api, session } from './api.js';
import { $, el, fmtSize, problem } from './ui.js';

// ---- files -------------------------------------------------------------------------------------

export const files = { project: '' };

/** A project's files; a download is fetched with the token in a header, never in a link. */
export async function listFiles(projectId) {
  files.project = projectId;
  $('files-note').textContent = `· ${projectId} · loading`;
  let body;
  try {
    body = await api(`projects/${encodeURIComponent(projectId)}/files`);
  } catch (err) {
    $('files-note').textContent = `· ${projectId} · ${err.message}`;
    $('files').tBodies[0].replaceChildren();
    return;
  }
  $('files-note').textContent = `· ${projectId} · ${body.files.length} file${body.files.length === 1 ? '' : 's'}`;
  $('files').tBodies[0].replaceChildren(
    ...body.files.map((f) => {
      const button = el('button', { type: 'button', title: `sha256 ${f.sha256}` }, 'download');
      button.addEventListener('click', () => void downloadFile(f));
      return el(
        'tr',
        {},
        el('td', {}, f.name),
        el('td', { className: 'num' }, fmtSize(f.size)),
        el('td', {}, f.content_type),
        el('td', {}, f.uploaded_by),
        el('td', { title: f.created_at }, f.created_at ? new Date(f.created_at).toLocaleString() : ''),
        el('td', {}, button),
      );
    }),
  );
}

export async function downloadFile(f) {
  let res;
  try {
    res = await fetch(new URL(`files/${encodeURIComponent(f.file_id)}`, API_BASE), { headers: { Authorization: `Bearer ${session.token}` }, credentials: 'omit' });
  } catch {
    return problem('download failed: the sidecar is unreachable');
  }
  if (!res.ok) return problem(`download of ${f.name} failed: HTTP ${res.status}`);
  const url = URL.createObjectURL(await res.blob());
  const a = el('a', { href: url, download: f.name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

