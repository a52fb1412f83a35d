// Turning messages into DOM: escaped text, links, #tags and @mentions, times.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'text') el.textContent = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const TOKEN = /(\bhttps?:\/\/[^\s<>"']+)|((?<![\w#])#[\w-]+)|((?<![\w@])@[\w.-]*[\w-])/g;

// Text with links, clickable #tags and @mentions (the nick of `me` marked).
export function richText(text, { me, onTag } = {}) {
  const frag = document.createDocumentFragment();
  const lines = String(text ?? '').split('\n');
  lines.forEach((line, i) => {
    if (i) frag.append(h('br'));
    let last = 0;
    for (const m of line.matchAll(TOKEN)) {
      if (m.index > last) frag.append(line.slice(last, m.index));
      const [word, url, tag, mention] = m;
      if (url) {
        frag.append(h('a', { href: url, target: '_blank', rel: 'noopener noreferrer' }, url));
      } else if (tag) {
        frag.append(h('a', { href: '#', class: 'tag', dataset: { tag: tag.slice(1) },
          onclick: (e) => { e.preventDefault(); onTag && onTag(tag.slice(1)); } }, tag));
      } else if (mention) {
        const nick = mention.slice(1).toLowerCase();
        const mine = me && (nick === me.nick.toLowerCase() || ['everyone', 'all', 'team'].includes(nick));
        frag.append(h('span', { class: mine ? 'at-mention at-me' : 'at-mention' }, mention));
      }
      last = m.index + word.length;
    }
    if (last < line.length) frag.append(line.slice(last));
  });
  return frag;
}

export function initials(name) {
  const parts = String(name || '?').trim().split(/\s+/);
  return ((parts[0] || '?')[0] + (parts.length > 1 ? parts[parts.length - 1][0] : '')).toUpperCase();
}

export function hue(key) {
  let n = 0;
  for (const ch of String(key)) n = (n * 31 + ch.charCodeAt(0)) % 360;
  return n;
}

const HUES = 12;
export function avatar(user, extra = '') {
  const key = user ? (user.id ?? user.name) : '?';
  return h('span', { class: `avatar hue-${hue(key) % HUES} ${extra}`, 'aria-hidden': 'true' },
    initials(user ? (user.name || user.nick) : '?'));
}

export function time(ms) {
  const d = new Date(ms);
  const now = new Date();
  const hm = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  if (d.toDateString() === now.toDateString()) return hm;
  return `${d.toLocaleDateString([], { month: 'short', day: 'numeric' })} ${hm}`;
}

export function day(ms) {
  return new Date(ms).toLocaleDateString([], { weekday: 'long', month: 'long', day: 'numeric' });
}

// Plain text from the sanitized HTML of inbox items (never inserted as HTML).
export function textOf(html) {
  const doc = new DOMParser().parseFromString(String(html || ''), 'text/html');
  return doc.body.textContent || '';
}

export function uuid() {
  if (crypto.randomUUID) return crypto.randomUUID();
  return 'u' + Date.now().toString(36) + Math.random().toString(36).slice(2);
}
