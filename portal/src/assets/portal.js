// Berth portal: the behaviour of the server-rendered pages. The
// Content-Security-Policy forbids inline code, so everything hooks in from
// here. Changes go through the JSON management API with the session's
// anti-CSRF token; text from the server is only ever set as textContent.
'use strict';

(function () {
  const $ = (id) => document.getElementById(id);
  const csrf = () => {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : '';
  };

  // fetch() wrapper: JSON in and out, errors as Error(message of the API).
  async function api(method, url, body) {
    const opts = {
      method,
      credentials: 'same-origin',
      headers: { Accept: 'application/json', 'X-CSRF-Token': csrf() },
    };
    if (body !== undefined) {
      opts.headers['Content-Type'] = 'application/json';
      opts.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(url, opts);
    } catch (e) {
      throw new Error('The server could not be reached. Check your connection and try again.');
    }
    const text = await resp.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (e) {
      data = null;
    }
    if (resp.status === 401) {
      throw new Error('Your session has ended. Reload the page to sign in again.');
    }
    if (!resp.ok) {
      throw new Error(data && data.error ? data.error.message : `Request failed (HTTP ${resp.status}).`);
    }
    return data;
  }

  function show(el, text) {
    el.textContent = text;
    el.hidden = false;
  }

  // --- copy buttons ----------------------------------------------------------

  function copyFallback(text) {
    const area = document.createElement('textarea');
    area.value = text;
    area.setAttribute('readonly', '');
    area.className = 'offscreen';
    document.body.appendChild(area);
    area.select();
    let ok = false;
    try {
      ok = document.execCommand('copy');
    } catch (e) {
      ok = false;
    }
    area.remove();
    return ok;
  }

  async function copy(text, button) {
    let ok = false;
    if (navigator.clipboard && window.isSecureContext) {
      try {
        await navigator.clipboard.writeText(text);
        ok = true;
      } catch (e) {
        ok = false;
      }
    }
    if (!ok) ok = copyFallback(text);
    const label = button.dataset.label || button.textContent;
    button.dataset.label = label;
    button.textContent = ok ? 'Copied' : 'Copy failed';
    button.classList.toggle('done', ok);
    setTimeout(() => {
      button.textContent = label;
      button.classList.remove('done');
    }, 1500);
  }

  document.addEventListener('click', (ev) => {
    const button = ev.target.closest('button[data-copy], button[data-copy-target]');
    if (!button) return;
    let text = button.dataset.copy;
    if (text === undefined) {
      const target = $(button.dataset.copyTarget);
      text = target ? target.textContent : '';
    }
    copy(text, button);
  });

  // --- selection and the Actions menu ---------------------------------------------

  const selected = () => Array.from(document.querySelectorAll('input.select:checked')).map((c) => c.value);

  function updateSelection() {
    const n = selected().length;
    const del = $('action-delete');
    if (del && del.dataset.allowed === 'true') {
      del.disabled = n === 0;
      del.title = n === 0 ? 'Select what to delete first' : `Delete ${n} selected`;
    }
    const all = $('select-all');
    if (all) {
      const boxes = document.querySelectorAll('input.select');
      all.checked = boxes.length > 0 && n === boxes.length;
      all.indeterminate = n > 0 && n < boxes.length;
    }
    const count = $('selection-count');
    if (count) count.textContent = n ? `${n} selected` : '';
  }

  document.addEventListener('change', (ev) => {
    if (ev.target.id === 'select-all') {
      document.querySelectorAll('input.select').forEach((b) => {
        b.checked = ev.target.checked;
      });
    }
    if (ev.target.matches('input.select, #select-all')) updateSelection();
  });

  // Close the Actions menu when clicking elsewhere.
  document.addEventListener('click', (ev) => {
    const menu = $('actions');
    if (menu && menu.open && !menu.contains(ev.target)) menu.open = false;
  });

  // --- delete dialogs with typed confirmation -------------------------------------------

  const page = $('page');
  const dialog = $('delete-dialog');

  function confirmInputs() {
    return Array.from(document.querySelectorAll('#delete-items input'));
  }

  function updateConfirm() {
    const inputs = confirmInputs();
    const ok = inputs.length > 0 && inputs.every((i) => i.value === i.dataset.expect);
    $('delete-confirm').disabled = !ok;
    inputs.forEach((i) => i.classList.toggle('matches', i.value === i.dataset.expect));
  }

  function openDelete() {
    const names = selected();
    if (!names.length || !dialog) return;
    const tags = page.dataset.kind === 'tags';
    const what = tags ? (names.length === 1 ? 'tag' : 'tags') : (names.length === 1 ? 'repository' : 'repositories');
    $('delete-title').textContent = `Delete ${names.length === 1 ? 'this' : names.length} ${what}?`;
    $('delete-intro').textContent = tags
      ? 'Only the tags go: other tags on the same digest stay. Type each tag name to confirm.'
      : 'Every tag of each repository goes, and storage nothing else uses is reclaimed. Type each repository name to confirm.';
    const items = $('delete-items');
    items.replaceChildren();
    names.forEach((name, i) => {
      const label = document.createElement('label');
      label.className = 'confirm-item';
      const prompt = document.createElement('span');
      prompt.append('Type ');
      const code = document.createElement('code');
      code.textContent = name;
      prompt.append(code, ' to confirm');
      const input = document.createElement('input');
      input.type = 'text';
      input.autocomplete = 'off';
      input.spellcheck = false;
      input.dataset.expect = name;
      input.id = `confirm-${i}`;
      input.className = 'confirm-input';
      input.addEventListener('input', updateConfirm);
      label.append(prompt, input);
      items.append(label);
    });
    $('delete-error').hidden = true;
    updateConfirm();
    const menu = $('actions');
    if (menu) menu.open = false;
    dialog.showModal();
    const first = confirmInputs()[0];
    if (first) first.focus();
  }

  async function submitDelete(ev) {
    ev.preventDefault();
    const inputs = confirmInputs();
    if (!inputs.every((i) => i.value === i.dataset.expect)) return;
    const button = $('delete-confirm');
    button.disabled = true;
    button.textContent = 'Deleting…';
    try {
      if (page.dataset.kind === 'tags') {
        const repo = page.dataset.repository;
        await api('POST', `/api/v1/repositories/${repo}/-/tags:delete`, {
          tags: inputs.map((i) => ({ tag: i.dataset.expect, confirm: i.value })),
        });
      } else {
        await api('POST', '/api/v1/repositories:delete', {
          repositories: inputs.map((i) => ({ name: i.dataset.expect, confirm: i.value })),
        });
      }
      dialog.close();
      window.location.reload();
    } catch (e) {
      show($('delete-error'), e.message);
      button.textContent = 'Confirm';
      updateConfirm();
    }
  }

  if (dialog) {
    $('delete-form').addEventListener('submit', submitDelete);
    $('delete-cancel').addEventListener('click', () => dialog.close());
  }
  const del = $('action-delete');
  if (del) del.addEventListener('click', openDelete);

  // --- live filter -------------------------------------------------------------------
  // The server renders the listing; while typing, the same page is fetched
  // and only its listing swapped in, so there is one renderer and paging
  // stays on the server (fast with any number of repositories).

  const filter = $('filter');
  let generation = 0;
  async function refreshListing() {
    const q = filter.value.trim();
    const url = '/repositories' + (q ? `?q=${encodeURIComponent(q)}` : '');
    const mine = ++generation;
    let resp;
    try {
      resp = await fetch(url, { credentials: 'same-origin' });
    } catch (e) {
      return;
    }
    if (mine !== generation) return; // a newer keystroke won
    if (resp.redirected && new URL(resp.url).pathname === '/login') {
      window.location.href = '/login';
      return;
    }
    const doc = new DOMParser().parseFromString(await resp.text(), 'text/html');
    const fresh = doc.getElementById('listing');
    const current = $('listing');
    if (mine !== generation || !fresh || !current) return;
    current.replaceWith(document.adoptNode(fresh));
    history.replaceState(null, '', url);
    updateSelection();
  }
  if (filter) {
    let timer = null;
    filter.addEventListener('input', () => {
      clearTimeout(timer);
      timer = setTimeout(refreshListing, 200);
    });
  }

  // --- Docker Login ------------------------------------------------------------------------

  const mint = $('mint-login');
  if (mint) {
    mint.addEventListener('click', async () => {
      mint.disabled = true;
      $('login-error').hidden = true;
      try {
        const data = await api('POST', '/api/v1/credentials', {});
        $('login-command').textContent = data.command;
        $('login-result').hidden = false;
        mint.textContent = 'Get another command';
      } catch (e) {
        show($('login-error'), e.message);
      } finally {
        mint.disabled = false;
      }
    });
  }

  // --- a node's Pull form: the command, then its progress every 500 ms ---------------------

  const pullForm = $('pull-form');
  const FINAL = ['succeeded', 'failed', 'expired'];

  function shortDigest(d) {
    const [alg, hex] = String(d || '').split(':');
    return hex ? `${alg}:${hex.slice(0, 12)}` : String(d || '');
  }

  function renderCommand(c) {
    $('pull-command').textContent = c.id;
    const state = $('pull-state');
    state.textContent = c.state;
    state.className = `badge state-${c.state}`;
    const progress = c.progress || {};
    $('pull-message').textContent = progress.message || '';
    const blobs = $('pull-blobs');
    blobs.replaceChildren();
    (progress.blobs || []).forEach((b) => {
      const row = document.createElement('div');
      row.className = 'blob';
      const label = document.createElement('code');
      label.textContent = shortDigest(b.digest);
      const bar = document.createElement('progress');
      bar.max = b.total > 0 ? b.total : 1;
      bar.value = b.total > 0 ? Math.min(b.done, b.total) : (b.state === 'done' || b.state === 'exists' ? 1 : 0);
      const note = document.createElement('span');
      note.className = 'muted small';
      note.textContent = `${b.state || ''} ${b.done || 0}/${b.total || '?'} bytes`;
      row.append(label, bar, note);
      blobs.append(row);
    });
    const result = c.result;
    if (FINAL.includes(c.state)) {
      if (result && result.error) {
        show($('pull-error'), result.error);
      } else if (c.state === 'expired') {
        show($('pull-error'), 'The node did not take the command before it expired.');
      } else if (result && result.output && result.output.pulled) {
        const pulled = result.output.pulled;
        $('pull-message').textContent = `Pulled ${pulled.image} (${pulled.digest})`;
      }
    }
  }

  // Polls until the command is final; a node that stays offline keeps it
  // queued, so the page says so and stops asking after 30 minutes.
  async function followCommand(node, id) {
    const started = Date.now();
    for (;;) {
      await new Promise((resolve) => setTimeout(resolve, 500));
      if (Date.now() - started > 30 * 60 * 1000) {
        show($('pull-error'), 'Stopped following the command; reload the page to see where it is.');
        return;
      }
      let c;
      try {
        c = await api('GET', `/api/v1/nodes/${encodeURIComponent(node)}/commands/${encodeURIComponent(id)}`);
      } catch (e) {
        show($('pull-error'), e.message);
        return;
      }
      renderCommand(c);
      if (FINAL.includes(c.state)) return;
      if (c.state === 'queued' && Date.now() - started > 10 * 1000 && !$('pull-message').textContent) {
        $('pull-message').textContent = 'Waiting for the node to take the command (it may be offline).';
      }
    }
  }

  if (pullForm) {
    pullForm.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const image = $('pull-image').value.trim();
      if (!image) return;
      const node = page.dataset.node;
      const button = $('pull-button');
      button.disabled = true;
      $('pull-error').hidden = true;
      try {
        const c = await api('POST', `/api/v1/nodes/${encodeURIComponent(node)}/commands`, {
          action: { pull: { image } },
        });
        $('pull-status').hidden = false;
        renderCommand(c);
        await followCommand(node, c.id);
      } catch (e) {
        show($('pull-error'), e.message);
      } finally {
        button.disabled = false;
      }
    });
  }

  updateSelection();
})();
