// The WebSocket connection: requests with replies, events with their position,
// automatic reconnect with back-off, and resume from the last position seen.
export class ChatSocket extends EventTarget {
  constructor(url) {
    super();
    this.url = url;
    this.ws = null;
    this.state = 'idle';          // connecting | open | offline | closed
    this.lastSeq = null;          // last stored event position received
    this.subscription = null;     // {flows, private}
    this.pending = new Map();     // ref -> {resolve, reject}
    this.nextRef = 1;
    this.retry = 0;
    this.timer = null;
    this.stopped = false;
  }

  setState(state) {
    this.state = state;
    this.dispatchEvent(new CustomEvent('state', { detail: state }));
  }

  connect() {
    if (this.stopped || this.ws) return;
    clearTimeout(this.timer);
    this.setState('connecting');
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.onopen = () => { this.retry = 0; };
    ws.onmessage = (e) => this.receive(e.data);
    ws.onclose = (e) => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (e.code === 4401) {            // signed out or credentials refused
        this.stopped = true;
        this.setState('closed');
        this.dispatchEvent(new CustomEvent('unauthorized', { detail: e.reason }));
        return;
      }
      if (this.stopped) { this.setState('closed'); return; }
      if (!navigator.onLine) { this.setState('offline'); return; }
      this.schedule();
    };
  }

  schedule() {
    this.setState('connecting');
    const delay = Math.min(15000, 500 * 2 ** this.retry) * (0.75 + Math.random() / 2);
    this.retry = Math.min(this.retry + 1, 6);
    this.timer = setTimeout(() => this.connect(), delay);
  }

  receive(text) {
    let frame;
    try { frame = JSON.parse(text); } catch (e) { return; }
    switch (frame.op) {
      case 'hello':
        this.user = frame.user;
        this.setState('open');
        if (this.subscription) this.sendSubscribe();
        // Requests not answered yet are sent again: posts carry a uuid, so a post
        // that did arrive before the connection dropped is not stored twice.
        for (const { text } of this.pending.values()) this.ws.send(text);
        break;
      case 'event':
        if (frame.seq && (this.lastSeq === null || frame.seq > this.lastSeq)) this.lastSeq = frame.seq;
        this.dispatchEvent(new CustomEvent('event', { detail: frame.data }));
        break;
      case 'synced':
        if (frame.seq && (this.lastSeq === null || frame.seq > this.lastSeq)) this.lastSeq = frame.seq;
        this.dispatchEvent(new CustomEvent('synced', { detail: frame.seq }));
        break;
      case 'ack': case 'error': case 'pong': {
        const waiter = this.pending.get(frame.ref);
        if (waiter) {
          this.pending.delete(frame.ref);
          if (frame.op === 'error') waiter.reject(Object.assign(new Error(frame.message), frame));
          else waiter.resolve(frame);
        } else if (frame.op === 'error') {
          console.warn('flowtwist:', frame.message);
        }
        break;
      }
      default: break;
    }
  }

  subscribe(flows, withPrivate = true) {
    this.subscription = { flows, private: withPrivate };
    if (this.state === 'open') this.sendSubscribe();
  }

  sendSubscribe() {
    const frame = { op: 'subscribe', flows: this.subscription.flows, private: this.subscription.private };
    if (this.lastSeq !== null) frame.since = this.lastSeq;
    this.ws.send(JSON.stringify(frame));
  }

  request(op, fields = {}) {
    const ref = this.nextRef++;
    const text = JSON.stringify({ op, ref, ...fields });
    return new Promise((resolve, reject) => {
      this.pending.set(ref, { resolve, reject, text });
      if (this.state === 'open' && this.ws) this.ws.send(text);
    });
  }

  notify(op, fields = {}) {
    if (this.state === 'open' && this.ws) this.ws.send(JSON.stringify({ op, ...fields }));
  }

  goOffline() {
    if (this.ws) { const ws = this.ws; this.ws = null; ws.close(1000, 'offline'); }
    clearTimeout(this.timer);
    this.setState('offline');
  }

  goOnline() {
    if (this.stopped || this.ws) return;
    this.retry = 0;
    this.connect();
  }

  close() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close(1000, 'bye');
    this.ws = null;
    for (const { reject } of this.pending.values()) reject(new Error('closed'));
    this.pending.clear();
    this.setState('closed');
  }
}
