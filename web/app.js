// flowtwist web app: sign in, flows and private conversations, live chat over the
// WebSocket API, threads, tags, mentions, team inbox, people and search.
import { api, get, query, setCsrf, ApiError } from './api.js';
import { ChatSocket } from './socket.js';
import { h, richText, avatar, time, day, textOf, uuid } from './render.js';

const CHAT_EVENTS = ['message', 'comment', 'status', 'line', 'file', 'action'];
const INBOX_EVENTS = ['mail', 'rss', 'twitter', 'activity', 'discussion'];
const PAGE = 50;
const IDLE_MS = 5 * 60 * 1000;

const state = {
  me: null,
  flows: [],                 // flow JSON (joined)
  flowsById: new Map(),
  users: new Map(),          // id -> user
  privates: new Map(),       // other user id -> {id, name}
  convs: new Map(),          // key -> {messages: [], ids: Set, complete, loading}
  unread: new Map(),         // key -> count
  mentions: new Map(),       // key -> count
  members: new Map(),        // flow id -> [{user, status, presence}]
  presence: new Map(),       // `${flow}:${user}` -> active | idle | away
  current: null,             // {key, kind: 'flow'|'private', flow?, user?}
  tag: null,                 // tag filter on the current flow
  pane: 'inbox',             // inbox | thread | people | search
  thread: null,              // parent message of the open thread
  replyTo: null,             // message being replied to from the composer
  socket: null,
  idle: false,
};
window.flowtwist = state;     // for the curious (and the browser tests)

const $ = (sel, root = document) => root.querySelector(sel);

// ------------------------------------------------------------ boot and sign-in

async function boot() {
  try {
    const session = await get('/session');
    await start(session);
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) showLogin();
    else showLogin('The server cannot be reached right now.');
  }
}

function showLogin(message) {
  const root = $('#root');
  root.replaceChildren(loginView(message));
  const params = new URLSearchParams(location.search);
  if (!message && params.get('error') === 'login') $('#login-error').hidden = false;
  $('#login-form input[name=email]').focus();
}

function loginView(message) {
  const error = h('p', { class: 'login-error', id: 'login-error', hidden: !message },
    message || 'Wrong email or password.');
  const form = h('form', { class: 'login-card', id: 'login-form', method: 'post', action: '/login' },
    h('div', { class: 'brand' }, h('img', { src: '/static/icon.svg', alt: '' }), ' flowtwist'),
    h('h1', {}, 'Sign in'),
    error,
    h('label', {}, 'Email ', h('input', { name: 'email', type: 'email', autocomplete: 'username', required: true })),
    h('label', {}, 'Password ', h('input', { name: 'password', type: 'password', autocomplete: 'current-password', required: true })),
    h('button', { type: 'submit', class: 'primary' }, 'Sign in'));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const data = Object.fromEntries(new FormData(form));
    const button = $('button', form);
    button.disabled = true;
    try {
      const session = await api('POST', '/login', data);
      await start(session);
    } catch (err) {
      error.textContent = err.status === 401 ? 'Wrong email or password.' : err.message;
      error.hidden = false;
      button.disabled = false;
    }
  });
  return h('main', { class: 'login', id: 'login-view' }, form);
}

async function signOut() {
  try { await api('POST', '/logout'); } catch (e) { /* signed out anyway */ }
  if (state.socket) state.socket.close();
  state.socket = null;
  state.me = null;
  history.replaceState(null, '', '/app');
  showLogin();
}

// ------------------------------------------------------------ the app

async function start(session) {
  state.me = session.user;
  setCsrf(session.csrf);
  const [flows, users, privates] = await Promise.all([get('/flows'), get('/users'), get('/private')]);
  state.flows = flows;
  state.flowsById = new Map(flows.map((f) => [f.id, f]));
  state.users = new Map(users.map((u) => [String(u.id), u]));
  state.privates = new Map(privates.filter((p) => p.open)
    .map((p) => [String(p.id), { id: String(p.id), name: p.name }]));
  $('#root').replaceChildren(appView());
  // On narrow screens the side pane covers the chat: closed until asked for.
  if (matchMedia('(max-width: 1100px)').matches) $('#app').classList.add('pane-closed');
  renderSidebar();
  connect();
  route(location.pathname, false);
  countUnread();
  watchIdle();
}

function appView() {
  return h('div', { class: 'app', id: 'app' },
    h('aside', { class: 'sidebar', id: 'sidebar' },
      h('header', { class: 'me' },
        avatar(state.me),
        h('div', { class: 'me-text' },
          h('strong', { id: 'me-name' }, state.me.name || state.me.nick),
          h('button', { class: 'status-button', id: 'status-button', title: 'Set your status', onclick: editStatus },
            localStorage.getItem('ft-status') || 'Set a status')),
        h('span', { class: 'conn', id: 'conn', dataset: { state: 'connecting' }, title: 'Connecting' })),
      h('form', { class: 'search', id: 'search-form', role: 'search', onsubmit: (e) => { e.preventDefault(); search(); } },
        h('input', { type: 'search', id: 'search-input', placeholder: 'Search this conversation', 'aria-label': 'Search' })),
      h('nav', { id: 'nav', class: 'nav' }),
      h('footer', { class: 'side-foot' },
        h('button', { class: 'link', id: 'sign-out', onclick: signOut }, 'Sign out'))),
    h('div', { class: 'scrim', id: 'scrim', onclick: () => toggleSidebar(false) }),
    h('section', { class: 'chat', id: 'chat' },
      h('header', { class: 'chat-head' },
        h('button', { class: 'icon menu', id: 'menu', 'aria-label': 'Flows', onclick: () => toggleSidebar(true) }, '☰'),
        h('div', { class: 'title' }, h('h2', { id: 'title' }, ''), h('span', { id: 'subtitle', class: 'subtitle' }, '')),
        h('div', { class: 'head-tools' },
          h('button', { class: 'chip', id: 'tag-filter', hidden: true, onclick: () => setTag(null) }),
          tabButton('inbox', 'Inbox'), tabButton('people', 'People'))),
      h('div', { class: 'messages', id: 'messages' },
        h('div', { class: 'history-state', id: 'history-state' }),
        h('div', { class: 'message-list', id: 'message-list', 'aria-live': 'polite' })),
      composer('composer', 'Message', sendMessage, true)),
    h('aside', { class: 'pane', id: 'pane' },
      h('header', { class: 'pane-head' },
        h('h3', { id: 'pane-title' }, 'Team inbox'),
        h('button', { class: 'icon', 'aria-label': 'Close', onclick: () => showPane(null) }, '×')),
      h('div', { class: 'pane-body', id: 'pane-body' })));
}

function tabButton(name, label) {
  return h('button', { class: 'tab', dataset: { pane: name }, onclick: () => showPane(state.pane === name && paneOpen() ? null : name) }, label);
}

function composer(id, placeholder, onSend, withReply) {
  const input = h('textarea', { rows: 1, placeholder, 'aria-label': placeholder, enterkeyhint: 'send' });
  const form = h('form', { class: 'composer', id },
    withReply ? h('div', { class: 'reply-banner', hidden: true },
      h('span', { class: 'reply-text' }),
      h('button', { type: 'button', class: 'icon', 'aria-label': 'Cancel reply', onclick: () => setReply(null) }, '×')) : null,
    h('div', { class: 'composer-row' }, input, h('button', { type: 'submit', class: 'primary send' }, 'Send')));
  const submit = async () => {
    const text = input.value.trim();
    if (!text) return;
    input.value = '';
    autosize(input);
    try {
      await onSend(text);
    } catch (e) {
      input.value = text;
      toast(e.message || 'Could not send');
    }
  };
  form.addEventListener('submit', (e) => { e.preventDefault(); submit(); });
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); submit(); }
    if (e.key === 'Escape' && withReply) setReply(null);
  });
  input.addEventListener('input', () => autosize(input));
  return form;
}

function autosize(el) {
  el.style.height = 'auto';
  el.style.height = `${Math.min(el.scrollHeight, 160)}px`;
}

function toast(text) {
  const el = h('div', { class: 'toast', role: 'alert' }, text);
  document.body.append(el);
  setTimeout(() => el.remove(), 4000);
}

function toggleSidebar(open) {
  $('#app').classList.toggle('sidebar-open', open);
}

// ------------------------------------------------------------ sidebar

function keyOfFlow(flow) { return flow.id; }
function keyOfPrivate(uid) { return `private:${uid}`; }

function renderSidebar() {
  const nav = $('#nav');
  if (!nav) return;
  const byOrg = new Map();
  for (const flow of state.flows) {
    const org = flow.organization;
    if (!byOrg.has(org.id)) byOrg.set(org.id, { org, flows: [] });
    byOrg.get(org.id).flows.push(flow);
  }
  const sections = [];
  for (const { org, flows } of byOrg.values()) {
    sections.push(h('section', { class: 'org' },
      h('h3', {}, org.name),
      h('ul', {}, flows.map((f) => navItem(keyOfFlow(f), f.name, `/app/${f.organization.parameterized_name}/${f.parameterized_name}`, '#')))));
  }
  const privates = [...state.privates.values()];
  sections.push(h('section', { class: 'org' },
    h('h3', {}, 'Private'),
    h('ul', { id: 'private-list' }, privates.length
      ? privates.map((p) => navItem(keyOfPrivate(p.id), userName(p.id), `/app/private/${p.id}`, '@'))
      : h('li', { class: 'empty' }, 'No conversations yet')),
    h('button', { class: 'link new-private', onclick: newPrivate }, '+ New conversation')));
  nav.replaceChildren(...sections);
}

function navItem(key, name, href, sigil) {
  const unread = state.unread.get(key) || 0;
  const mentions = state.mentions.get(key) || 0;
  const active = state.current && state.current.key === key;
  return h('li', {},
    h('a', { href, class: `nav-link${active ? ' active' : ''}${mentions ? ' has-mention' : ''}${unread ? ' has-unread' : ''}`,
      dataset: { key }, onclick: (e) => { e.preventDefault(); navigate(href); } },
      h('span', { class: 'sigil' }, sigil),
      h('span', { class: 'name' }, name),
      mentions ? h('span', { class: 'badge mention-badge', title: 'Mentions' }, `@${mentions}`) : null,
      unread ? h('span', { class: 'badge unread-badge', title: 'Unread' }, String(unread)) : null));
}

function bump(map, key, delta) {
  const n = Math.max(0, (map.get(key) || 0) + delta);
  if (n) map.set(key, n); else map.delete(key);
}

async function countUnread() {
  const me = state.me.id;
  await Promise.all(state.flows.map(async (flow) => {
    const key = keyOfFlow(flow);
    const base = flowPath(flow);
    try {
      const mentions = await get(`${base}/messages${query({ tags: `:unread:${me}`, limit: 100 })}`);
      state.mentions.set(key, mentions.length);
      const last = Number(localStorage.getItem(`ft-read-${key}`) || 0);
      if (last && !(state.current && state.current.key === key)) {
        const newer = await get(`${base}/messages${query({ since_id: last, event: 'message,comment', limit: 100 })}`);
        state.unread.set(key, newer.filter((m) => m.user !== String(me)).length);
      }
    } catch (e) { /* a flow we lost meanwhile */ }
  }));
  await Promise.all([...state.privates.keys()].map(async (uid) => {
    try {
      const unread = await get(`/private/${uid}/messages${query({ tags: `:unread:${me}`, limit: 100 })}`);
      state.unread.set(keyOfPrivate(uid), unread.length);
    } catch (e) { /* ignore */ }
  }));
  if (state.current) { state.unread.delete(state.current.key); state.mentions.delete(state.current.key); }
  renderSidebar();
}

function flowPath(flow) {
  return `/flows/${flow.organization.parameterized_name}/${flow.parameterized_name}`;
}

function userName(id) {
  const u = state.users.get(String(id));
  return u ? (u.nick || u.name) : `user ${id}`;
}

async function newPrivate() {
  const nick = prompt('Start a private conversation with (nick):');
  if (!nick) return;
  const user = [...state.users.values()].find((u) => u.nick.toLowerCase() === nick.replace(/^@/, '').toLowerCase());
  if (!user || String(user.id) === String(state.me.id)) { toast(`Nobody called ${nick}`); return; }
  state.privates.set(String(user.id), { id: String(user.id), name: user.nick });
  renderSidebar();
  navigate(`/app/private/${user.id}`);
}

// ------------------------------------------------------------ routing

function navigate(path) {
  history.pushState(null, '', path);
  route(path, true);
  toggleSidebar(false);
}

window.addEventListener('popstate', () => state.me && route(location.pathname, false));

function route(path) {
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  if (parts[0] === 'app') parts.shift();
  let target = null;
  if (parts[0] === 'private' && parts[1] && state.users.has(parts[1])) {
    target = { kind: 'private', key: keyOfPrivate(parts[1]), user: parts[1] };
    if (!state.privates.has(parts[1])) {
      state.privates.set(parts[1], { id: parts[1], name: userName(parts[1]) });
    }
  } else if (parts.length >= 2) {
    const flow = state.flows.find((f) => f.organization.parameterized_name === parts[0] && f.parameterized_name === parts[1]);
    if (flow) target = { kind: 'flow', key: keyOfFlow(flow), flow };
  }
  if (!target) {
    const remembered = state.flowsById.get(localStorage.getItem('ft-last-flow'));
    const flow = remembered || state.flows[0];
    if (!flow) { $('#title').textContent = 'No flows yet'; return; }
    history.replaceState(null, '', `/app/${flow.organization.parameterized_name}/${flow.parameterized_name}`);
    target = { kind: 'flow', key: keyOfFlow(flow), flow };
  }
  open(target);
}

function open(target) {
  state.current = target;
  state.tag = null;
  state.thread = null;
  setReply(null);
  if (target.kind === 'flow') localStorage.setItem('ft-last-flow', target.flow.id);
  $('#title').textContent = target.kind === 'flow' ? target.flow.name : `@${userName(target.user)}`;
  $('#subtitle').textContent = target.kind === 'flow' ? target.flow.organization.name : 'Private conversation';
  $('#app').dataset.kind = target.kind;
  $('#search-input').value = '';
  renderTagFilter();
  state.unread.delete(target.key);
  renderSidebar();
  renderMessages(true);
  loadHistory(target.key, true);
  if (target.kind === 'flow') {
    if (state.pane === 'thread' || state.pane === 'search') state.pane = 'inbox';
    renderPane();
    loadMembers(target.flow);
  } else {
    showPane(null);
  }
  $('#composer textarea').focus({ preventScroll: true });
}

// ------------------------------------------------------------ history

function conv(key) {
  if (!state.convs.has(key)) state.convs.set(key, { messages: [], ids: new Set(), complete: false, loading: false, inbox: null });
  return state.convs.get(key);
}

function historyUrl(target, params) {
  if (target.kind === 'flow') return `${flowPath(target.flow)}/messages${query(params)}`;
  return `/private/${target.user}/messages${query(params)}`;
}

async function loadHistory(key, initial = false) {
  const target = state.current;
  const c = conv(key);
  if (c.loading || (c.complete && !initial) || (initial && c.loaded)) { renderMessages(initial); return; }
  c.loading = true;
  $('#history-state').textContent = 'Loading…';
  const oldest = c.messages.length ? c.messages[0].id : undefined;
  try {
    const page = await get(historyUrl(target, { event: CHAT_EVENTS.join(','), limit: PAGE, until_id: initial ? undefined : oldest }));
    const list = $('#messages');
    const before = list.scrollHeight - list.scrollTop;
    let added = 0;
    for (const m of page) if (insert(c, m)) added++;
    if (page.length < PAGE) c.complete = true;
    c.loaded = true;
    if (state.current && state.current.key === key) {
      renderMessages(false);
      if (initial) scrollToBottom(); else list.scrollTop = list.scrollHeight - before;
      markRead(c);
    }
  } catch (e) {
    toast(`Could not load messages: ${e.message}`);
  } finally {
    c.loading = false;
    renderHistoryState(c);
  }
}

function renderHistoryState(c) {
  $('#history-state').textContent = c.complete ? 'This is the beginning of the conversation.' : (c.loading ? 'Loading…' : '');
}

function insert(c, m) {
  if (c.ids.has(m.id)) return false;
  c.ids.add(m.id);
  const list = c.messages;
  if (!list.length || list[list.length - 1].id < m.id) list.push(m);
  else {
    const i = list.findIndex((x) => x.id > m.id);
    list.splice(i < 0 ? list.length : i, 0, m);
  }
  return true;
}

function scrollToBottom() {
  const list = $('#messages');
  list.scrollTop = list.scrollHeight;
}

function nearBottom() {
  const list = $('#messages');
  return list.scrollHeight - list.scrollTop - list.clientHeight < 120;
}

function markRead(c) {
  const target = state.current;
  if (!target || !state.socket) return;
  const me = `:unread:${state.me.id}`;
  let maxId = 0;
  for (const m of c.messages) {
    maxId = Math.max(maxId, m.id || 0);
    if ((m.tags || []).includes(me) && !m._readSent) {
      m._readSent = true;
      const where = target.kind === 'flow' ? { flow: target.flow.id } : { user: Number(target.user) };
      state.socket.request('read', { ...where, message: m.id }).catch(() => { m._readSent = false; });
    }
  }
  if (maxId) localStorage.setItem(`ft-read-${target.key}`, String(maxId));
  if (state.mentions.get(target.key)) { state.mentions.delete(target.key); renderSidebar(); }
}

document.addEventListener('scroll', (e) => {
  if (e.target && e.target.id === 'messages' && e.target.scrollTop < 80 && state.current && !state.tag) {
    loadHistory(state.current.key);
  }
}, true);

// ------------------------------------------------------------ messages

function isMine(m) { return String(m.user) === String(state.me.id); }

function mentionsMe(m) {
  const id = state.me.id;
  const tags = m.tags || [];
  // In a private conversation every message carries `:unread:` for its reader.
  return tags.includes(`:user:${id}`) || (m.flow && tags.includes(`:unread:${id}`)) || tags.includes(`:highlight:${id}`)
    || (tags.includes(':user:everyone') && !isMine(m));
}

function author(m) {
  if (m.user && m.user !== '0') {
    const u = state.users.get(String(m.user));
    return u || { id: m.user, name: `user ${m.user}`, nick: `user${m.user}` };
  }
  const name = m.external_user_name || (m.author && m.author.name) || (m.thread && m.thread.source && m.thread.source.name) || 'Integration';
  return { id: name, name, nick: name };
}

function renderMessages(reset) {
  const target = state.current;
  const el = $('#message-list');
  if (!target || !el) return;
  const c = conv(target.key);
  const shown = state.tag ? (c.filtered || []) : c.messages;
  const items = [];
  let lastDay = null;
  let prev = null;
  for (const m of shown) {
    if (!CHAT_EVENTS.includes(m.event) || (m.app === 'influx' && m.event !== 'comment')) continue;
    const d = new Date(m.sent).toDateString();
    if (d !== lastDay) { items.push(h('div', { class: 'day' }, h('span', {}, day(m.sent)))); lastDay = d; prev = null; }
    const grouped = prev && prev.user === m.user && m.event === 'message' && prev.event === 'message' && m.sent - prev.sent < 5 * 60000;
    items.push(messageView(m, grouped));
    prev = m;
  }
  if (!items.length && c.loaded) items.push(h('div', { class: 'empty-chat' }, state.tag ? `No messages tagged #${state.tag}.` : 'No messages yet. Say hello!'));
  el.replaceChildren(...items);
  if (!state.tag) renderHistoryState(c);
  else $('#history-state').textContent = '';
  if (reset) scrollToBottom();
}

function messageView(m, grouped) {
  const who = author(m);
  const classes = ['msg', `ev-${m.event}`];
  if (grouped) classes.push('grouped');
  if (mentionsMe(m)) classes.push('mention');
  if (isMine(m)) classes.push('mine');
  const body = h('div', { class: 'body' });
  if (m.event === 'comment') {
    const parentId = commentParent(m);
    body.append(h('a', { href: '#', class: 'in-reply', onclick: (e) => { e.preventDefault(); openThreadById(parentId); } },
      '↳ ', (m.content && m.content.title) || 'thread'));
    body.append(h('div', { class: 'text' }, richText(m.content && m.content.text, { me: state.me, onTag: setTag })));
  } else if (m.event === 'status') {
    body.append(h('div', { class: 'text status-text' }, 'changed status: ', h('em', {}, richText(m.content, { me: state.me, onTag: setTag }))));
  } else if (m.event === 'action') {
    body.append(h('div', { class: 'text action-text' }, actionText(m)));
  } else if (m.event === 'file') {
    const f = m.content || {};
    body.append(h('div', { class: 'text' }, h('a', { href: f.path, target: '_blank', rel: 'noopener' }, `📎 ${f.file_name || 'file'}`)));
  } else {
    const text = typeof m.content === 'string' ? m.content : JSON.stringify(m.content);
    body.append(h('div', { class: 'text' }, text === '' ? h('em', { class: 'deleted' }, 'message deleted') : richText(text, { me: state.me, onTag: setTag })));
  }
  const tags = visibleTags(m);
  if (tags.length) body.append(h('div', { class: 'tags' }, tags.map((t) => tagChip(t))));
  const replies = m.thread && m.event !== 'comment' && (m.thread.internal_comments || 0) - 1;
  const actions = h('div', { class: 'actions' },
    m.event === 'message' && state.current.kind === 'flow'
      ? h('button', { class: 'reply-button', title: 'Reply in thread', onclick: () => openThread(m) }, 'Reply') : null,
    replies > 0 ? h('button', { class: 'link replies', onclick: () => openThread(m) }, `${replies} ${replies === 1 ? 'reply' : 'replies'}`) : null);
  return h('article', { class: classes.join(' '), dataset: { id: m.id, event: m.event, user: m.user } },
    grouped ? h('span', { class: 'gutter-time' }, time(m.sent)) : avatar(who),
    h('div', { class: 'main' },
      grouped ? null : h('header', {}, h('strong', { class: 'author' }, who.name || who.nick), h('time', { datetime: new Date(m.sent).toISOString() }, time(m.sent)),
        m.edited ? h('span', { class: 'edited' }, '(edited)') : null),
      body, actions));
}

function actionText(m) {
  const c = m.content || {};
  const who = author(m).name;
  const what = { join: 'joined the flow', add_people: `added ${c.description}`, add_rss_feed: `added a feed ${c.description}`,
    remove_rss_feed: `removed a feed ${c.description}` }[c.type];
  return `${who} ${what || `${c.type || 'did something'} ${typeof c.description === 'string' ? c.description : ''}`}`;
}

function visibleTags(m) {
  return (m.tags || []).filter((t) => !t.startsWith(':') && !t.startsWith('influx:'));
}

function tagChip(tag) {
  return h('a', { href: '#', class: 'tag chip-tag', dataset: { tag }, onclick: (e) => { e.preventDefault(); setTag(tag); } }, `#${tag}`);
}

function commentParent(m) {
  const t = (m.tags || []).find((x) => x.startsWith('influx:'));
  return t ? Number(t.slice(7)) : null;
}

// ------------------------------------------------------------ sending

async function sendMessage(text) {
  const target = state.current;
  if (!target) return;
  if (state.replyTo) {
    const parent = state.replyTo;
    setReply(null);
    await state.socket.request('comment', { flow: target.flow.id, message: parent.id, content: text, uuid: uuid() });
    return;
  }
  if (target.kind === 'flow') {
    await state.socket.request('post', { flow: target.flow.id, event: 'message', content: text, uuid: uuid() });
  } else {
    await state.socket.request('private', { user: Number(target.user), content: text, uuid: uuid() });
  }
}

function setReply(m) {
  state.replyTo = m;
  const banner = $('#composer .reply-banner');
  if (!banner) return;
  banner.hidden = !m;
  $('.reply-text', banner).textContent = m ? `Replying to ${author(m).name}: ${String(m.content).slice(0, 80)}` : '';
  if (m) $('#composer textarea').focus();
}

async function editStatus() {
  const status = prompt('Your status (shown in your flows):', localStorage.getItem('ft-status') || '');
  if (status === null || !status.trim()) return;
  localStorage.setItem('ft-status', status.trim());
  $('#status-button').textContent = status.trim();
  await Promise.all(state.flows.map((f) => state.socket.request('status', { flow: f.id, content: status.trim(), uuid: uuid() })
    .catch((e) => toast(e.message))));
}

// ------------------------------------------------------------ tags and search

async function setTag(tag) {
  const target = state.current;
  if (!target || target.kind !== 'flow') return;
  state.tag = tag;
  renderTagFilter();
  const c = conv(target.key);
  if (!tag) { c.filtered = null; renderMessages(true); return; }
  c.filtered = [];
  renderMessages(true);
  try {
    c.filtered = await get(historyUrl(target, { tags: tag, limit: 100 }));
  } catch (e) { toast(e.message); }
  if (state.tag === tag) renderMessages(true);
}

function renderTagFilter() {
  const chip = $('#tag-filter');
  chip.hidden = !state.tag;
  chip.textContent = state.tag ? `#${state.tag}  ×` : '';
  chip.title = 'Show all messages';
}

async function search() {
  const words = $('#search-input').value.trim();
  const target = state.current;
  if (!words || !target) return;
  state.pane = 'search';
  showPane('search');
  const body = $('#pane-body');
  body.replaceChildren(h('p', { class: 'muted' }, 'Searching…'));
  try {
    const found = await get(historyUrl(target, { search: words, limit: 50 }));
    body.replaceChildren(found.length
      ? h('div', { class: 'results' }, found.reverse().map((m) => messageView(m, false)))
      : h('p', { class: 'muted' }, `Nothing found for “${words}”.`));
  } catch (e) { body.replaceChildren(h('p', { class: 'muted' }, e.message)); }
}

// ------------------------------------------------------------ side pane

function paneOpen() { return !$('#app').classList.contains('pane-closed'); }

function showPane(name) {
  const app = $('#app');
  if (!name) { app.classList.add('pane-closed'); state.thread = null; return; }
  app.classList.remove('pane-closed');
  state.pane = name;
  renderPane();
}

function renderPane() {
  for (const b of document.querySelectorAll('.tab')) b.classList.toggle('active', b.dataset.pane === state.pane && paneOpen());
  const title = { inbox: 'Team inbox', thread: 'Thread', people: 'People', search: 'Search results' }[state.pane];
  $('#pane-title').textContent = title;
  $('#app').dataset.pane = state.pane;
  if (state.pane === 'inbox') renderInbox();
  else if (state.pane === 'thread') renderThread();
  else if (state.pane === 'people') renderPeople();
}

async function renderInbox() {
  const target = state.current;
  const body = $('#pane-body');
  if (!target || target.kind !== 'flow') { body.replaceChildren(); return; }
  const c = conv(target.key);
  if (!c.inbox) {
    body.replaceChildren(h('p', { class: 'muted' }, 'Loading…'));
    try {
      c.inbox = await get(historyUrl(target, { event: INBOX_EVENTS.join(','), limit: 30 }));
    } catch (e) { c.inbox = []; }
    if (state.current !== target || state.pane !== 'inbox') return;
  }
  body.replaceChildren(c.inbox.length
    ? h('div', { class: 'inbox' }, [...c.inbox].reverse().map(inboxItem))
    : h('div', { class: 'muted empty-inbox' },
      h('p', {}, 'The team inbox collects mail, feeds, tweets and integration activity for this flow.'),
      h('p', {}, 'Nothing here yet.')));
}

function inboxItem(m) {
  const c = m.content || {};
  const kind = m.event;
  let title = m.title || c.title || c.subject || (m.thread && m.thread.title) || kind;
  let text = c.text || c.summary || textOf(m.body || c.content || c.body || '');
  let meta = '';
  if (kind === 'mail') meta = (c.from && c.from[0] && (c.from[0].name || c.from[0].address)) || 'mail';
  else if (kind === 'rss') meta = (c.feed && c.feed.title) || 'feed';
  else if (kind === 'twitter') { meta = `@${(c.user && c.user.screen_name) || 'twitter'}`; title = c.text || title; text = ''; }
  else meta = (m.author && m.author.name) || (m.thread && m.thread.source && m.thread.source.name) || kind;
  const link = c.link || c.url || (m.thread && m.thread.external_url);
  return h('article', { class: `inbox-item kind-${kind}`, dataset: { id: m.id } },
    h('div', { class: 'kind' }, h('span', { class: `kind-badge kind-${kind}` }, kind), h('span', { class: 'muted' }, meta), h('time', {}, time(m.sent))),
    h('h4', {}, link ? h('a', { href: link, target: '_blank', rel: 'noopener noreferrer' }, textOf(title)) : textOf(title)),
    text ? h('p', {}, String(text).slice(0, 280)) : null,
    h('button', { class: 'link', onclick: () => openThread(m) }, 'Discuss'));
}

async function openThreadById(id) {
  const target = state.current;
  if (!id || !target || target.kind !== 'flow') return;
  const c = conv(target.key);
  let parent = c.messages.find((m) => m.id === id);
  if (!parent) {
    try { parent = await get(`${flowPath(target.flow)}/messages/${id}`); } catch (e) { toast('That message is gone'); return; }
  }
  openThread(parent);
}

function openThread(m) {
  state.thread = m;
  showPane('thread');
}

async function renderThread() {
  const target = state.current;
  const parent = state.thread;
  const body = $('#pane-body');
  if (!parent || !target || target.kind !== 'flow') { body.replaceChildren(h('p', { class: 'muted' }, 'Choose “Reply” on a message.')); return; }
  const list = h('div', { class: 'thread-list', id: 'thread-list' }, messageView(parent, false));
  const reply = composer('thread-composer', 'Reply in thread', async (text) => {
    await state.socket.request('comment', { flow: target.flow.id, message: parent.id, content: text, uuid: uuid() });
  }, false);
  body.replaceChildren(list, reply);
  try {
    const comments = await get(`${flowPath(target.flow)}/messages/${parent.id}/comments`);
    if (state.thread !== parent) return;
    for (const c of comments) appendThreadComment(c);
  } catch (e) { toast(e.message); }
  $('textarea', reply).focus();
}

function appendThreadComment(m) {
  const list = $('#thread-list');
  if (!list || list.querySelector(`[data-id="${m.id}"]`)) return;
  const view = messageView(m, false);
  const inReply = view.querySelector('.in-reply');
  if (inReply) inReply.remove();     // every comment here answers the same message
  list.append(view);
  list.scrollTop = list.scrollHeight;
}

async function loadMembers(flow) {
  try {
    const users = await get(`${flowPath(flow)}/users`);
    state.members.set(flow.id, users);
    for (const u of users) {
      if (!state.users.has(String(u.id))) state.users.set(String(u.id), u);
      const key = `${flow.id}:${u.id}`;
      if (!state.presence.has(key)) {
        const recent = u.last_activity && Date.now() - u.last_activity < IDLE_MS;
        state.presence.set(key, recent ? 'active' : 'away');
      }
    }
    if (state.pane === 'people') renderPeople();
  } catch (e) { /* ignore */ }
}

function renderPeople() {
  const target = state.current;
  const body = $('#pane-body');
  if (!target || target.kind !== 'flow') return;
  const users = state.members.get(target.flow.id) || [];
  body.replaceChildren(h('ul', { class: 'people' }, users.map((u) => {
    const presence = state.presence.get(`${target.flow.id}:${u.id}`) || 'away';
    return h('li', { dataset: { user: u.id } },
      h('span', { class: 'with-dot' }, avatar(u), h('span', { class: `dot ${presence}`, title: presence })),
      h('div', {}, h('strong', {}, u.name), ' ', h('span', { class: 'muted' }, `@${u.nick}`),
        u.status ? h('div', { class: 'muted status-line' }, u.status) : null),
      String(u.id) !== String(state.me.id)
        ? h('button', { class: 'link', onclick: () => { state.privates.set(String(u.id), { id: String(u.id) }); renderSidebar(); navigate(`/app/private/${u.id}`); } }, 'Message') : null);
  })));
}

// ------------------------------------------------------------ live events

function connect() {
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const socket = new ChatSocket(`${proto}//${location.host}/ws`);
  state.socket = socket;
  socket.addEventListener('state', (e) => {
    const el = $('#conn');
    if (!el) return;
    el.dataset.state = e.detail;
    el.title = { open: 'Connected', connecting: 'Reconnecting…', offline: 'Offline', closed: 'Disconnected' }[e.detail] || e.detail;
  });
  socket.addEventListener('event', (e) => receive(e.detail));
  socket.addEventListener('synced', () => {
    const c = state.current && state.convs.get(state.current.key);
    if (c) markRead(c);
  });
  socket.addEventListener('unauthorized', () => { if (state.me) { state.me = null; showLogin('You have been signed out.'); } });
  socket.subscribe(state.flows.map((f) => f.id), true);
  socket.connect();
}

window.addEventListener('offline', () => state.socket && state.socket.goOffline());
window.addEventListener('online', () => state.socket && state.socket.goOnline());

function conversationOf(m) {
  if (m.flow) return m.flow;
  if (m.to !== undefined && m.to !== null) {
    const other = isMine(m) ? String(m.to) : String(m.user);
    return keyOfPrivate(other);
  }
  return null;
}

function receive(m) {
  const key = conversationOf(m);
  const current = state.current && state.current.key === key;
  switch (m.event) {
    case 'activity.user': {
      const presence = m.content && m.content.left ? 'away' : (m.content && m.content.last_activity ? 'active' : 'idle');
      state.presence.set(`${m.flow}:${m.user}`, presence);
      if (current && state.pane === 'people') renderPeople();
      return;
    }
    case 'message-edit': case 'tag-change': case 'message-delete': {
      const c = key && state.convs.get(key);
      const target = c && c.messages.find((x) => x.id === m.content.message);
      if (!target) return;
      if (m.event === 'message-edit') {
        if (target.event === 'comment' && m.content.updated_content && typeof m.content.updated_content === 'object') target.content = m.content.updated_content;
        else target.content = m.content.updated_content;
        target.edited = m.sent;
      } else if (m.event === 'tag-change') {
        target.tags = (target.tags || []).filter((t) => !(m.content.remove || []).includes(t)).concat(m.content.add || []);
        if (!(target.tags.includes(`:unread:${state.me.id}`)) && !current) recountMentions(key);
      } else {
        c.messages = c.messages.filter((x) => x.id !== m.content.message);
      }
      if (current) renderMessages(false);
      return;
    }
    case 'flow-add': case 'flow-remove':
      get('/flows').then((flows) => {
        state.flows = flows;
        state.flowsById = new Map(flows.map((f) => [f.id, f]));
        state.socket.subscribe(flows.map((f) => f.id), true);
        renderSidebar();
      });
      return;
    case 'user-edit': {
      const u = m.content && m.content.user;
      if (u && state.users.has(String(u.id))) Object.assign(state.users.get(String(u.id)), u);
      return;
    }
    default: break;
  }
  if (!key || !m.id) return;
  if (key.startsWith('private:') && !state.privates.has(key.slice(8))) {
    state.privates.set(key.slice(8), { id: key.slice(8) });
  }
  const c = conv(key);
  const inbox = INBOX_EVENTS.includes(m.event) || (m.app === 'influx' && m.event !== 'comment' && !CHAT_EVENTS.includes(m.event));
  if (inbox) {
    if (c.inbox && !c.inbox.some((x) => x.id === m.id)) c.inbox.push(m);
    if (current && state.pane === 'inbox' && paneOpen()) renderInbox();
    return;
  }
  if (m.event === 'status' && m.flow) {
    const members = state.members.get(m.flow) || [];
    const u = members.find((x) => String(x.id) === String(m.user));
    if (u) u.status = m.content;
  }
  if (!c.loaded && !current) {
    // Not loaded yet: history will bring it; count it.
  } else if (!insert(c, m)) {
    return;
  }
  if (m.event === 'comment' && state.thread && commentParent(m) === state.thread.id && current) appendThreadComment(m);
  if (m.event === 'comment' && m.thread) {
    const parent = c.messages.find((x) => x.id === commentParent(m));
    if (parent && parent.thread) parent.thread = m.thread;
  }
  if (current) {
    if (state.tag && !(m.tags || []).some((t) => t.toLowerCase() === state.tag.toLowerCase())) return;
    if (state.tag) (c.filtered = c.filtered || []).push(m);
    const stick = nearBottom() || isMine(m);
    renderMessages(false);
    if (stick) scrollToBottom();
    if (!document.hidden) markRead(c);
    else if (!isMine(m)) notifyTitle(1);
  } else if (!isMine(m) && ['message', 'comment', 'file'].includes(m.event)) {
    bump(state.unread, key, 1);
    if (mentionsMe(m) && (m.tags || []).includes(`:unread:${state.me.id}`)) bump(state.mentions, key, 1);
    renderSidebar();
    notifyTitle(1);
  }
}

function recountMentions(key) {
  const c = state.convs.get(key);
  if (!c) return;
  const n = c.messages.filter((x) => (x.tags || []).includes(`:unread:${state.me.id}`)).length;
  if (n) state.mentions.set(key, n); else state.mentions.delete(key);
  renderSidebar();
}

let titleCount = 0;
function notifyTitle(delta) {
  titleCount = delta ? titleCount + delta : 0;
  document.title = titleCount ? `(${titleCount}) flowtwist` : 'flowtwist';
}

// ------------------------------------------------------------ idle / active

function watchIdle() {
  let timer = null;
  const active = () => {
    clearTimeout(timer);
    if (state.idle && state.socket) { state.idle = false; state.socket.notify('activity', { state: 'active' }); }
    timer = setTimeout(goIdle, IDLE_MS);
  };
  const goIdle = () => {
    if (!state.idle && state.socket) { state.idle = true; state.socket.notify('activity', { state: 'idle' }); }
  };
  for (const ev of ['keydown', 'pointerdown', 'focus']) window.addEventListener(ev, active, { passive: true });
  document.addEventListener('visibilitychange', () => {
    if (document.hidden) goIdle();
    else {
      active();
      notifyTitle(0);
      const c = state.current && state.convs.get(state.current.key);
      if (c) markRead(c);
    }
  });
  active();
}

boot();
