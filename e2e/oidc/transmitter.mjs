// A minimal Shared Signals Framework (SSF 1.0) transmitter for Portcullis's tests, written from
// the specs: SETs (RFC 8417) carrying CAEP 1.0 / RISC 1.0 events about RFC 9493 subjects
// (`sub_id`), signed RS256 with explicit type `secevent+jwt`, delivered by push (RFC 8935) or
// poll (RFC 8936).
//
//   node transmitter.mjs         PORT (issuer http://127.0.0.1:PORT), ADMIN_PORT
//                                LONG_POLL_MS: how long a poll without returnImmediately
//                                waits for a SET (default 1000)
//
// Prints `READY <port> <admin port>` when listening.
//
// The transmitter port (the receiver's view):
//   GET  /.well-known/ssf-configuration   transmitter configuration metadata
//   GET  /jwks                            its signing keys (old keys stay after /rotate)
//   POST /stream     create a stream: {delivery?, events_requested?, description?} -> 201 config
//                    delivery {method: "urn:ietf:rfc:8935", endpoint_url, authorization_header?}
//                    pushes; no delivery (or method "urn:ietf:rfc:8936") polls at /poll/<id>.
//                    Test extensions: `aud` (default "https://gateway.portcullis.test") and
//                    `poll_token` (default random); the config answered carries `poll_token`.
//   GET  /stream[?stream_id=]   one config, or the list of them
//   DELETE /stream?stream_id=   204
//   GET  /status?stream_id=     {stream_id, status, reason?}
//   POST /status   {stream_id, status, reason?} -> 200 (receiver-requested: no stream-updated SET)
//   POST /verify   {stream_id, state?} -> 204, after sending/queueing the verification SET
//   All of the above but the first two need `Authorization: Bearer transmitter-admin-token`.
//   POST /poll/<stream_id>   RFC 8936 poll, `Authorization: Bearer <the stream's poll_token>`:
//                    {maxEvents?, returnImmediately?, ack?: [jti], setErrs?: {jti: {err,
//                    description}}} -> {sets: {jti: SET}, moreAvailable}. Acks and setErrs take
//                    SETs off the queue; a SET sent but not yet acknowledged is sent again.
//
// The admin port (the test's view):
//   POST /emit   {stream_id?, event, subject, aud?, bad?, txn?, event_body?}
//                event: session-revoked | credential-change | account-disabled |
//                credential-compromise | verification | stream-updated, or a full event URI;
//                subject: {format: "iss_sub", iss, sub} | {format: "email", email} |
//                {format: "opaque", id} (any RFC 9493 / complex subject passes through);
//                bad: signature (signed by an unpublished key under a published kid) |
//                issuer | audience | typ (header typ "JWT") | exp (adds an exp claim).
//                Without stream_id the newest stream is used. Not filtered by the stream's
//                events_delivered (a test can send what was not asked for). Push: delivered now;
//                poll: queued. -> 200 {jti, delivered_status (null when queued), set,
//                response_body?}
//   GET  /deliveries      every push attempt {jti, stream_id, event, endpoint_url, status,
//                         body} and every poll outcome {jti, stream_id, method: "poll",
//                         status: "acked" | "error", err?}
//   GET  /streams         the streams with their poll tokens and queued jtis
//   POST /stream-status   {stream_id, status, reason?}: the transmitter itself changes the
//                         status and sends a stream-updated SET (before pausing/disabling,
//                         after enabling). Paused streams hold SETs, disabled ones drop them.
//   POST /rotate          a new signing key; the old one stays published
//   POST /retire          only the newest key stays published
import http from 'node:http';
import { generateKeyPairSync, randomUUID, randomBytes } from 'node:crypto';
import { SignJWT } from 'jose';

const port = Number(process.env.PORT);
const adminPort = Number(process.env.ADMIN_PORT);
const longPollMs = Number(process.env.LONG_POLL_MS ?? 1000);
const issuer = `http://127.0.0.1:${port}`;
const ADMIN_TOKEN = 'transmitter-admin-token';
const DEFAULT_AUD = 'https://gateway.portcullis.test';
const PUSH = 'urn:ietf:rfc:8935';
const POLL = 'urn:ietf:rfc:8936';

export const EVENTS = {
  'session-revoked': 'https://schemas.openid.net/secevent/caep/event-type/session-revoked',
  'credential-change': 'https://schemas.openid.net/secevent/caep/event-type/credential-change',
  'account-disabled': 'https://schemas.openid.net/secevent/risc/event-type/account-disabled',
  'credential-compromise': 'https://schemas.openid.net/secevent/risc/event-type/credential-compromise',
  verification: 'https://schemas.openid.net/secevent/ssf/event-type/verification',
  'stream-updated': 'https://schemas.openid.net/secevent/ssf/event-type/stream-updated',
};
const SUPPORTED = [
  EVENTS['session-revoked'], EVENTS['credential-change'],
  EVENTS['account-disabled'], EVENTS['credential-compromise'],
];

// Event members the specs define (CAEP 1.0, RISC 1.0), with plausible values.
function eventBody(name) {
  const now = Math.floor(Date.now() / 1000);
  switch (name) {
    case 'session-revoked': return { initiating_entity: 'admin', event_timestamp: now };
    case 'credential-change':
      return { credential_type: 'password', change_type: 'update', initiating_entity: 'user', event_timestamp: now };
    case 'account-disabled': return { reason: 'hijacking' };
    case 'credential-compromise': return { credential_type: 'password', event_timestamp: now };
    default: return {};
  }
}

function newKey() {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const kid = randomUUID();
  return { kid, privateKey, jwk: { ...publicKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' } };
}

let keys = [newKey()];
const streams = new Map(); // stream_id -> stream
const deliveries = [];

function publicConfig(s) {
  return {
    stream_id: s.stream_id,
    iss: issuer,
    aud: s.aud,
    delivery: s.delivery,
    events_supported: SUPPORTED,
    ...(s.events_requested ? { events_requested: s.events_requested } : {}),
    events_delivered: s.events_delivered,
    ...(s.description !== undefined ? { description: s.description } : {}),
    poll_token: s.poll_token,
  };
}

function createStream(body) {
  const stream_id = randomBytes(16).toString('hex');
  let delivery = body.delivery ?? { method: POLL };
  if (delivery.method === POLL) {
    delivery = { method: POLL, endpoint_url: `${issuer}/poll/${stream_id}` };
  } else if (delivery.method === PUSH) {
    if (typeof delivery.endpoint_url !== 'string') return null;
    delivery = {
      method: PUSH,
      endpoint_url: delivery.endpoint_url,
      ...(delivery.authorization_header ? { authorization_header: delivery.authorization_header } : {}),
    };
  } else {
    return null;
  }
  const requested = Array.isArray(body.events_requested) ? body.events_requested : undefined;
  const s = {
    stream_id,
    aud: body.aud ?? DEFAULT_AUD,
    delivery,
    events_requested: requested,
    events_delivered: requested ? SUPPORTED.filter((e) => requested.includes(e)) : SUPPORTED,
    description: body.description,
    poll_token: body.poll_token ?? randomBytes(16).toString('hex'),
    status: 'enabled',
    reason: undefined,
    queue: [], // poll: [{jti, set}] waiting for an ack
    held: [], // paused: [{jti, set, name}] waiting for the stream to be enabled
    waiters: new Set(), // long polls waiting for a SET
  };
  streams.set(stream_id, s);
  return s;
}

async function sign(payload, bad) {
  const key = keys[0];
  const header = { alg: 'RS256', typ: bad === 'typ' ? 'JWT' : 'secevent+jwt', kid: key.kid };
  const signer = bad === 'signature' ? newKey().privateKey : key.privateKey;
  return new SignJWT(payload).setProtectedHeader(header).sign(signer);
}

// Builds and signs a SET (RFC 8417 as profiled by SSF: no sub, no exp, sub_id at top level).
async function buildSet(s, { name, uri, subject, aud, bad, txn, body }) {
  const jti = randomUUID();
  const payload = {
    iss: bad === 'issuer' ? 'https://wrong-issuer.portcullis.test' : issuer,
    iat: Math.floor(Date.now() / 1000),
    jti,
    aud: bad === 'audience' ? 'https://wrong-audience.portcullis.test' : (aud ?? s.aud),
    txn: txn ?? randomUUID(),
    sub_id: subject,
    events: { [uri]: { ...eventBody(name), ...(body ?? {}) } },
  };
  if (bad === 'exp') payload.exp = payload.iat + 300;
  return { jti, set: await sign(payload, bad) };
}

async function push(s, jti, set, name) {
  const { endpoint_url, authorization_header } = s.delivery;
  const record = { jti, stream_id: s.stream_id, event: name, endpoint_url, status: 0, body: '' };
  try {
    const response = await fetch(endpoint_url, {
      method: 'POST',
      headers: {
        'content-type': 'application/secevent+jwt',
        accept: 'application/json',
        ...(authorization_header ? { authorization: authorization_header } : {}),
      },
      body: set,
      signal: AbortSignal.timeout(5000),
    });
    record.status = response.status;
    record.body = await response.text();
  } catch (e) {
    record.error = String(e.cause ?? e);
  }
  deliveries.push(record);
  return record;
}

function enqueue(s, jti, set) {
  s.queue.push({ jti, set });
  for (const wake of s.waiters) wake();
}

// Sends one SET the way the stream is configured; answers what /emit answers.
async function deliver(s, jti, set, name) {
  if (s.status === 'disabled') return { jti, delivered_status: null, set, dropped: true };
  if (s.status === 'paused') {
    s.held.push({ jti, set, name });
    return { jti, delivered_status: null, set, held: true };
  }
  if (s.delivery.method === POLL) {
    enqueue(s, jti, set);
    return { jti, delivered_status: null, set, queued: true };
  }
  const r = await push(s, jti, set, name);
  return { jti, delivered_status: r.status, set, response_body: r.body, ...(r.error ? { error: r.error } : {}) };
}

async function emit(s, spec) {
  const name = spec.event;
  const uri = EVENTS[name] ?? name;
  const { jti, set } = await buildSet(s, { ...spec, name, uri });
  return deliver(s, jti, set, name);
}

async function setStatus(s, status, reason) {
  const updated = { event: 'stream-updated', subject: { format: 'opaque', id: s.stream_id },
    body: { status, ...(reason ? { reason } : {}) } };
  const wasEnabled = s.status === 'enabled';
  let result;
  if (wasEnabled && status !== 'enabled') result = await emit(s, updated); // before stopping
  s.status = status;
  s.reason = reason;
  if (!wasEnabled && status === 'enabled') {
    result = await emit(s, updated); // upon re-enabling
    const held = s.held.splice(0);
    for (const h of held) await deliver(s, h.jti, h.set, h.name);
  }
  if (status === 'disabled') s.held = [];
  return result;
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString()));
    req.on('error', reject);
  });
}

async function readJson(req) {
  const text = await readBody(req);
  if (!text.trim()) return {};
  return JSON.parse(text);
}

function send(res, code, body, headers = {}) {
  if (body === undefined) {
    res.writeHead(code, { 'cache-control': 'no-store', ...headers });
    return res.end();
  }
  res.writeHead(code, { 'content-type': 'application/json', 'cache-control': 'no-store', ...headers });
  return res.end(JSON.stringify(body));
}

const bearer = (req) => /^Bearer (.+)$/i.exec(req.headers.authorization ?? '')?.[1];

async function poll(req, res, s) {
  let body;
  try {
    body = await readJson(req);
  } catch {
    return send(res, 400, { err: 'invalid_request', description: 'body is not JSON' });
  }
  for (const jti of body.ack ?? []) {
    const i = s.queue.findIndex((q) => q.jti === jti);
    if (i >= 0) {
      s.queue.splice(i, 1);
      deliveries.push({ jti, stream_id: s.stream_id, method: 'poll', status: 'acked' });
    }
  }
  for (const [jti, e] of Object.entries(body.setErrs ?? {})) {
    const i = s.queue.findIndex((q) => q.jti === jti);
    if (i >= 0) s.queue.splice(i, 1);
    deliveries.push({ jti, stream_id: s.stream_id, method: 'poll', status: 'error', err: e?.err, description: e?.description });
  }
  const max = body.maxEvents === undefined ? Infinity : Number(body.maxEvents);
  if (max > 0 && s.queue.length === 0 && body.returnImmediately !== true) {
    await new Promise((resolve) => {
      const wake = () => { clearTimeout(timer); s.waiters.delete(wake); resolve(); };
      const timer = setTimeout(wake, longPollMs);
      s.waiters.add(wake);
      req.on('close', wake);
    });
  }
  const batch = max > 0 ? s.queue.slice(0, max) : [];
  const sets = Object.fromEntries(batch.map((q) => [q.jti, q.set]));
  return send(res, 200, { sets, moreAvailable: s.queue.length > batch.length });
}

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, issuer);
  const path = url.pathname;
  try {
    if (req.method === 'GET' && path === '/.well-known/ssf-configuration') {
      return send(res, 200, {
        spec_version: '1_0',
        issuer,
        jwks_uri: `${issuer}/jwks`,
        delivery_methods_supported: [PUSH, POLL],
        configuration_endpoint: `${issuer}/stream`,
        status_endpoint: `${issuer}/status`,
        verification_endpoint: `${issuer}/verify`,
        authorization_schemes: [{ spec_urn: 'urn:ietf:rfc:6750' }],
        default_subjects: 'ALL',
      });
    }
    if (req.method === 'GET' && path === '/jwks') {
      return send(res, 200, { keys: keys.map((k) => k.jwk) });
    }
    if (path.startsWith('/poll/')) {
      const s = streams.get(decodeURIComponent(path.slice('/poll/'.length)));
      if (!s || s.delivery.method !== POLL) return send(res, 404, { err: 'invalid_request', description: 'no such poll stream' });
      if (bearer(req) !== s.poll_token) {
        return send(res, 401, { err: 'authentication_failed', description: 'poll token required' },
          { 'www-authenticate': 'Bearer' });
      }
      if (req.method !== 'POST') return send(res, 405, { err: 'invalid_request', description: 'POST only' });
      return await poll(req, res, s);
    }
    if (!['/stream', '/status', '/verify'].includes(path)) return send(res, 404, { error: 'not found' });
    if (bearer(req) !== ADMIN_TOKEN) return send(res, 401, { error: 'unauthorized' }, { 'www-authenticate': 'Bearer' });

    const id = url.searchParams.get('stream_id');
    if (path === '/stream') {
      if (req.method === 'POST') {
        const s = createStream(await readJson(req));
        if (!s) return send(res, 400, { error: 'unsupported delivery' });
        return send(res, 201, publicConfig(s));
      }
      if (req.method === 'GET') {
        if (id === null) return send(res, 200, [...streams.values()].map(publicConfig));
        const s = streams.get(id);
        return s ? send(res, 200, publicConfig(s)) : send(res, 404, { error: 'no such stream' });
      }
      if (req.method === 'DELETE') {
        return streams.delete(id) ? send(res, 204) : send(res, 404, { error: 'no such stream' });
      }
      return send(res, 405, { error: 'method not allowed' });
    }
    if (path === '/status') {
      if (req.method === 'GET') {
        const s = streams.get(id);
        if (!s) return send(res, 404, { error: 'no such stream' });
        return send(res, 200, { stream_id: s.stream_id, status: s.status, ...(s.reason ? { reason: s.reason } : {}) });
      }
      if (req.method === 'POST') {
        const body = await readJson(req);
        const s = streams.get(body.stream_id);
        if (!s) return send(res, 404, { error: 'no such stream' });
        if (!['enabled', 'paused', 'disabled'].includes(body.status)) return send(res, 400, { error: 'bad status' });
        const wasStopped = s.status !== 'enabled';
        s.status = body.status;
        s.reason = body.reason;
        if (body.status === 'disabled') s.held = [];
        if (wasStopped && body.status === 'enabled') {
          for (const h of s.held.splice(0)) await deliver(s, h.jti, h.set, h.name);
        }
        return send(res, 200, { stream_id: s.stream_id, status: s.status, ...(s.reason ? { reason: s.reason } : {}) });
      }
      return send(res, 405, { error: 'method not allowed' });
    }
    // /verify
    if (req.method !== 'POST') return send(res, 405, { error: 'method not allowed' });
    const body = await readJson(req);
    const s = streams.get(body.stream_id);
    if (!s) return send(res, 404, { error: 'no such stream' });
    await emit(s, {
      event: 'verification',
      subject: { format: 'opaque', id: s.stream_id },
      body: body.state !== undefined ? { state: body.state } : {},
    });
    return send(res, 204);
  } catch (e) {
    if (e instanceof SyntaxError) return send(res, 400, { error: 'body is not JSON' });
    console.error(e);
    return send(res, 500, { error: String(e) });
  }
});

const admin = http.createServer(async (req, res) => {
  const reply = (code, body) => send(res, code, body);
  try {
    if (req.method === 'POST' && req.url === '/emit') {
      const spec = await readJson(req);
      const s = spec.stream_id ? streams.get(spec.stream_id) : [...streams.values()].at(-1);
      if (!s) return reply(404, { error: 'no such stream (create one first)' });
      if (!spec.event || !spec.subject) return reply(400, { error: 'event and subject are required' });
      return reply(200, await emit(s, { ...spec, body: spec.event_body }));
    }
    if (req.method === 'GET' && req.url === '/deliveries') return reply(200, deliveries);
    if (req.method === 'GET' && req.url === '/streams') {
      return reply(200, [...streams.values()].map((s) => ({
        ...publicConfig(s), status: s.status, queued: s.queue.map((q) => q.jti), held: s.held.map((h) => h.jti),
      })));
    }
    if (req.method === 'POST' && req.url === '/stream-status') {
      const { stream_id, status, reason } = await readJson(req);
      const s = streams.get(stream_id);
      if (!s) return reply(404, { error: 'no such stream' });
      if (!['enabled', 'paused', 'disabled'].includes(status)) return reply(400, { error: 'bad status' });
      const result = await setStatus(s, status, reason);
      return reply(200, { stream_id, status, stream_updated: result ?? null });
    }
    if (req.method === 'POST' && req.url === '/rotate') {
      keys = [newKey(), ...keys];
      return reply(200, { kids: keys.map((k) => k.kid) });
    }
    if (req.method === 'POST' && req.url === '/retire') {
      keys = [keys[0]];
      return reply(200, { kids: keys.map((k) => k.kid) });
    }
    return reply(404, { error: 'not found' });
  } catch (e) {
    return reply(e instanceof SyntaxError ? 400 : 500, { error: String(e) });
  }
});

await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
await new Promise((resolve) => admin.listen(adminPort, '127.0.0.1', resolve));
console.log(`READY ${port} ${adminPort}`);
