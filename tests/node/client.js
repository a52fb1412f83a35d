// Drives the real node `flowdock` client (node-flowdock 0.9.1) against flowtwist.
// FLOWDOCK_API_URL / FLOWDOCK_STREAM_URL point it at the server under test; the rest
// of the set-up comes from FT_* variables.  Prints one JSON object with everything
// the client got back, for tests/test_node_client.py to check.
'use strict';

const flowdock = require('flowdock');

const env = process.env;
const out = {errors: [], replies: {}, streamed: [], statuses: []};
const fail = (where, err) => {
  out.errors.push(`${where}: ${err && err.message ? err.message : err}`);
};

// `new Session(token)`: the token as Basic user name, password "undefined".
const session = new flowdock.Session(env.FT_TOKEN);
session.on('error', (err) => fail('session', err));
// Email + password works the same way.
const bySecret = new flowdock.Session(env.FT_EMAIL, env.FT_PASSWORD);
bySecret.on('error', (err) => fail('password session', err));

const call = (name, fn) => new Promise((resolve) => {
  fn((err, body, res) => {
    if (err) fail(name, err);
    out.replies[name] = {body: body === undefined ? null : body,
                         status: res ? res.statusCode : null,
                         flowdockUser: res ? res.headers['flowdock-user'] || null : null};
    resolve(body);
  });
});

const timer = setTimeout(() => finish('timed out'), 20000);

let stream = null;
function finish(problem) {
  if (problem) fail('script', problem);
  clearTimeout(timer);
  if (stream) stream.end();
  process.stdout.write(JSON.stringify(out) + '\n');
  process.exit(0);
}

// Resolves once the stream has delivered an event matching `pred`.
const waiters = [];
function streamed(pred) {
  const seen = out.streamed.find(pred);
  if (seen) return Promise.resolve(seen);
  return new Promise((resolve) => waiters.push({pred, resolve}));
}

async function main() {
  const flows = await call('flows', (cb) => session.flows(cb));
  await call('flows_by_password', (cb) => bySecret.get('/flows', {}, cb));
  const flow = (flows || []).find((f) => f.id === env.FT_FLOW_ID);
  if (!flow) return finish('flow not in session.flows');

  stream = session.stream([flow.id], {active: 'idle', user: 1});
  stream.on('clientError', (code, text) => out.statuses.push(['clientError', code, text || null]));
  stream.on('message', (message) => {
    out.streamed.push(message);
    for (const w of waiters.slice()) {
      if (w.pred(message)) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(message);
      }
    }
  });
  await new Promise((resolve) => stream.once('connected', resolve));
  out.statuses.push(['connected']);

  const posted = await call('message', (cb) =>
    session.message(flow.id, `hello from node @${env.FT_PEER_NICK} #nodejs`, ['client'], cb));
  if (!posted || !posted.id) return finish('no message id');
  await streamed((m) => m.event === 'message' && m.id === posted.id);

  const reply = await call('comment', (cb) =>
    session.comment(flow.id, posted.id, 'a threaded reply', ['reply'], cb));
  await streamed((m) => m.event === 'comment' && reply && m.id === reply.id);

  const inThread = await call('threadMessage', (cb) =>
    session.threadMessage(flow.id, posted.thread_id, 'in the same thread', [], cb));
  await streamed((m) => inThread && m.id === inThread.id);

  const status = await call('status', (cb) => session.status(flow.id, 'writing tests', cb));
  await streamed((m) => m.event === 'status' && status && m.id === status.id);

  const pm = await call('privateMessage', (cb) =>
    session.privateMessage(env.FT_PEER_ID, 'psst from node', [], cb));
  await streamed((m) => m.to && pm && m.id === pm.id && m.content === 'psst from node');

  await call('editMessage', (cb) => session.editMessage(
    flow.parameterized_name, flow.organization.parameterized_name, posted.id,
    {content: 'hello again from node', tags: ['edited']}, cb));
  await streamed((m) => m.event === 'message-edit' && m.content.message === posted.id);
  await streamed((m) => m.event === 'tag-change' && m.content.message === posted.id);

  await call('invite', (cb) => session.invite(
    flow.parameterized_name, flow.organization.parameterized_name,
    'newcomer@example.com', 'join us', cb));

  await call('delete', (cb) => session.delete(
    `/flows/${flow.organization.parameterized_name}/${flow.parameterized_name}/messages/${posted.id}`,
    cb));

  // A bad token: the client reports the status as an error.
  const wrong = new flowdock.Session('not-a-token');
  const wrongError = await new Promise((resolve) => {
    wrong.on('error', () => {});
    wrong.flows((err) => resolve(err ? err.message : null));
  });
  out.replies.wrong_token = {error: wrongError};
  finish();
}

main().catch((err) => finish(err));
