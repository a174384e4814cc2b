// Assertions of the MCP end-to-end run (scripts/mcp-tests.sh) on Portcullis as an MCP resource
// server (MCP authorization 2025-11-25 / 2026-07-28, RFC 9728, RFC 6750, RFC 8707; Streamable
// HTTP 2026-07-28 "Request Metadata", SEP-2243).
//
//   node checks.mjs client  <result.json> <static|dynamic>   the OAuth client's run (client.mjs output)
//   node checks.mjs legacy  <result.json>                    a 2025-era client against a route with mcp.rules
//   node checks.mjs probes                                   requests made here, with the client's tokens
//   node checks.mjs upstream                                 what the MCP server (server.mjs) saw, all run long
//
// Env: GATEWAY (http://127.0.0.1:<proxy port>), UPSTREAM (server.mjs), ISSUER (the OpenID provider),
// TOKENS_FILE (access tokens the clients got: a JSON array per line, see client.mjs MCP_TOKENS_FILE),
// UPSTREAM_CREDENTIAL (the Secret value the gateway sends instead of the client's token),
// OTHER_AUDIENCE (an audience the TokenPolicy accepts that is not the MCP resource).
// Routes (see scripts/mcp-tests.sh): /mcp needs a token (mcp:tools; delete_everything needs
// mcp:tools + mcp:admin), upstreamCredential; /public/mcp is `auth: none` with a
// `deny: true` rule for delete_everything. Both have mcp.rules, so both are "strict".
//
// Prints PASS/FAIL per check; exit status 1 when any check failed.
import http from 'node:http';
import { readFileSync } from 'node:fs';
import { createHash } from 'node:crypto';

const GATEWAY = process.env.GATEWAY;
const UPSTREAM = process.env.UPSTREAM;
const ISSUER = process.env.ISSUER;
const RESOURCE = `${GATEWAY}/mcp`;
const PUBLIC_RESOURCE = `${GATEWAY}/public/mcp`;
const PRM_URL = `${GATEWAY}/.well-known/oauth-protected-resource/mcp`;
const VERSION = '2026-07-28';

let failed = 0;
let passed = 0;
function check(name, ok, detail) {
  if (ok) {
    passed += 1;
    console.log(`PASS ${name}`);
  } else {
    failed += 1;
    console.log(`FAIL ${name}${detail === undefined ? '' : `\n     ${typeof detail === 'string' ? detail : JSON.stringify(detail)}`}`);
  }
}
function done() {
  console.log(`checks ${process.argv[2]}: ${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}

// --- WWW-Authenticate (RFC 6750 / RFC 9110 auth-params) -----------------------------------------
function challenge(h) {
  if (!h) return null;
  const m = /^\s*Bearer\s+(.*)$/i.exec(h);
  if (!m) return { scheme: h.split(/\s/)[0], params: {} };
  const params = {};
  const re = /([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]+))/g;
  let p;
  while ((p = re.exec(m[1]))) params[p[1].toLowerCase()] = p[2] !== undefined ? p[2].replace(/\\(.)/g, '$1') : p[3];
  return { scheme: 'Bearer', params };
}
const scopeSet = (s) => new Set((s ?? '').split(/\s+/).filter(Boolean));
const sameSet = (a, b) => a.size === b.size && [...a].every((x) => b.has(x));

// --- tokens ---------------------------------------------------------------------------------------
function tokens() {
  const text = readFileSync(process.env.TOKENS_FILE, 'utf8');
  return text.split('\n').filter(Boolean).flatMap((l) => JSON.parse(l));
}
function claims(jwt) {
  return JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url').toString('utf8'));
}

// --- the upstream's record --------------------------------------------------------------------------
async function seen() {
  const res = await fetch(`${UPSTREAM}/__seen`);
  return res.json();
}

// ---------------------------------------------------------------------------------------------------
async function clientSection(file, registered) {
  const r = JSON.parse(readFileSync(file, 'utf8').trim().split('\n').pop());
  const tag = `client(${registered})`;
  check(`${tag}: ok, no errors`, r.ok === true && r.errors.length === 0, r.errors);
  check(`${tag}: registered ${registered}`, r.registered === registered, r.registered);
  check(`${tag}: protocol era modern (2026-07-28)`, r.era === 'modern', r.era);
  check(`${tag}: tools/list through the gateway`, JSON.stringify(r.tools) === JSON.stringify(['delete_everything', 'get_forecast', 'get_weather']), r.tools);
  check(`${tag}: get_weather answered`, r.weather === 'Weather in Oslo: sunny, 21°C', r.weather);
  check(`${tag}: first token holds exactly the challenged scope mcp:tools`, sameSet(scopeSet(r.weatherScopes), new Set(['mcp:tools'])), r.weatherScopes);
  check(`${tag}: get_forecast answered (Mcp-Param-Region forwarded)`, r.forecast === 'Forecast for Nordland: sunny for 3 day(s)', r.forecast);
  check(`${tag}: delete_everything stepped up (403 insufficient_scope, re-authorized, retried)`, r.delete?.status === 'stepped_up' && r.delete?.text === 'deleted everything' && r.delete?.isError === false, r.delete);
  check(`${tag}: stepped-up token holds mcp:tools and mcp:admin`, sameSet(scopeSet(r.delete?.scopes), new Set(['mcp:tools', 'mcp:admin'])), r.delete?.scopes);
  check(`${tag}: two authorizations (sign-in, step-up)`, r.authorizations === 2, r.authorizations);
  check(`${tag}: resource indicator = the MCP resource on every authorization (RFC 8707)`, r.resources.length === 2 && r.resources.every((x) => x === RESOURCE), r.resources);

  const t = r.trace;
  const first = t[0];
  const c401 = challenge(first?.wwwAuthenticate);
  check(`${tag}: first request (no token) -> 401 Bearer challenge`, first?.status === 401 && first?.bearer === false && c401?.scheme === 'Bearer', first);
  check(`${tag}: 401 challenge resource_metadata = ${PRM_URL}`, c401?.params.resource_metadata === PRM_URL, first?.wwwAuthenticate);
  check(`${tag}: 401 challenge scope = mcp:tools`, sameSet(scopeSet(c401?.params.scope), new Set(['mcp:tools'])), first?.wwwAuthenticate);
  const prm = t.find((x) => x.path === '/.well-known/oauth-protected-resource/mcp');
  check(`${tag}: the SDK fetched the RFC 9728 metadata from the challenge's URL (200)`, prm?.status === 200, prm);
  const mcpCalls = t.filter((x) => x.path === '/mcp');
  check(`${tag}: every MCP POST carried MCP-Protocol-Version ${VERSION} and Mcp-Method`, mcpCalls.every((x) => x.protocolVersion === VERSION && x.mcpMethod), mcpCalls);
  const dels = mcpCalls.filter((x) => x.mcpMethod === 'tools/call' && x.mcpName === 'delete_everything');
  const d403 = dels.find((x) => x.status === 403);
  const c403 = challenge(d403?.wwwAuthenticate);
  check(`${tag}: delete_everything with the mcp:tools token -> 403`, d403?.bearer === true, dels);
  check(`${tag}: 403 challenge error="insufficient_scope"`, c403?.params.error === 'insufficient_scope', d403?.wwwAuthenticate);
  check(`${tag}: 403 challenge scope lists every scope the call needs (mcp:tools mcp:admin)`, sameSet(scopeSet(c403?.params.scope), new Set(['mcp:tools', 'mcp:admin'])), d403?.wwwAuthenticate);
  check(`${tag}: 403 challenge resource_metadata = ${PRM_URL}`, c403?.params.resource_metadata === PRM_URL, d403?.wwwAuthenticate);
  check(`${tag}: delete_everything after step-up -> 200`, dels.at(-1)?.status === 200, dels);
  check(`${tag}: no other refusals (only the first 401 and the one 403)`, mcpCalls.filter((x) => x.status >= 400).length === 2, mcpCalls.filter((x) => x.status >= 400));
  done();
}

async function legacySection(file) {
  const r = JSON.parse(readFileSync(file, 'utf8').trim().split('\n').pop());
  const first = r.trace[0];
  check('legacy client: refused', r.ok === false, r);
  // Without a token the gateway answers 401 first (the token is checked before the body is
  // read); with one, 400 UnsupportedProtocolVersionError (-32022). Never a 2xx.
  const mcpTrace = r.trace.filter((x) => x.path === '/mcp');
  check('legacy client (no MCP-Protocol-Version 2026-07-28, no Mcp-Method): every call to the route with mcp.rules refused (401 before a token, 400 after)', mcpTrace.length > 0 && !first?.mcpMethod && mcpTrace.every((x) => x.status === 401 || x.status === 400), mcpTrace);
  const s = await seen();
  check('legacy client: no initialize ever reached the MCP server', !s.some((e) => e.body?.method === 'initialize'), s.filter((e) => e.body?.method === 'initialize').length);
  done();
}

// ---------------------------------------------------------------------------------------------------
const META = {
  'io.modelcontextprotocol/protocolVersion': VERSION,
  'io.modelcontextprotocol/clientInfo': { name: 'portcullis-checks', version: '1.0.0' },
  'io.modelcontextprotocol/clientCapabilities': {},
};
const rpc = (id, method, params = {}) => ({ jsonrpc: '2.0', id, method, params: { ...params, _meta: META } });
const call = (id, name, args = {}) => rpc(id, 'tools/call', { name, arguments: args });

// POST an MCP message with node:http (full control: Host, repeated header lines). `headers`
// replace the defaults (undefined drops one, an array sends several lines); `body` is an object
// (JSON, with Mcp-Method/Mcp-Name taken from it) or a string sent as is.
function post(path, { token, headers = {}, body, query = '' } = {}) {
  const h = {
    'content-type': 'application/json',
    accept: 'application/json, text/event-stream',
    'mcp-protocol-version': VERSION,
  };
  if (body && typeof body === 'object' && !Array.isArray(body)) {
    h['mcp-method'] = body.method;
    if (body.params?.name) h['mcp-name'] = body.params.name;
  }
  if (token) h.authorization = `Bearer ${token}`;
  for (const [k, v] of Object.entries(headers)) {
    if (v === undefined) delete h[k];
    else h[k] = v;
  }
  const payload = Buffer.from(typeof body === 'string' ? body : JSON.stringify(body));
  h['content-length'] = String(payload.length);
  const url = new URL(`${GATEWAY}${path}${query}`);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: url.hostname, port: url.port, path: url.pathname + url.search, method: 'POST', headers: h, agent: false }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let json = null;
        try {
          json = JSON.parse(text);
        } catch {
          const data = text.split(/\r?\n/).filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim());
          try { json = data.length ? JSON.parse(data.at(-1)) : null; } catch { /* not JSON */ }
        }
        resolve({ status: res.statusCode, www: res.headers['www-authenticate'] ?? null, json, text: text.slice(0, 400) });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.setTimeout(10000, () => req.destroy(new Error(`timeout: POST ${path}`)));
    req.end(payload);
  });
}
const brief = (r) => ({ status: r.status, www: r.www, body: r.text });
const resultText = (r) => r.json?.result?.content?.[0]?.text;

async function probesSection() {
  const all = tokens();
  const toolsOnly = all.find((t) => sameSet(scopeSet(claims(t).scope), new Set(['mcp:tools'])));
  const admin = all.find((t) => scopeSet(claims(t).scope).has('mcp:admin'));
  check('tokens: the clients got an mcp:tools token and an mcp:tools+mcp:admin token', toolsOnly && admin);
  if (!toolsOnly || !admin) return done();
  check('tokens: aud = the MCP resource (RFC 8707), iss = the provider', [toolsOnly, admin].every((t) => {
    const c = claims(t);
    return (c.aud === RESOURCE || (Array.isArray(c.aud) && c.aud.includes(RESOURCE))) && c.iss === ISSUER;
  }), claims(toolsOnly));

  // RFC 9728 metadata.
  for (const path of ['/.well-known/oauth-protected-resource/mcp', '/.well-known/oauth-protected-resource']) {
    const res = await fetch(`${GATEWAY}${path}`);
    const doc = await res.json().catch(() => null);
    check(`GET ${path}: 200 RFC 9728 document for ${RESOURCE}`, res.status === 200 && doc?.resource === RESOURCE
      && JSON.stringify(doc.authorization_servers) === JSON.stringify([ISSUER])
      && JSON.stringify(doc.bearer_methods_supported) === JSON.stringify(['header'])
      && ['mcp:tools', 'mcp:admin'].every((s) => doc.scopes_supported?.includes(s))
      && !doc.scopes_supported?.includes('offline_access'), { status: res.status, doc });
  }
  {
    const res = await fetch(`${GATEWAY}/.well-known/oauth-protected-resource/public/mcp`);
    const doc = await res.json().catch(() => null);
    check('GET /.well-known/oauth-protected-resource/public/mcp: the public route\'s own document', res.status === 200 && doc?.resource === PUBLIC_RESOURCE, { status: res.status, doc });
  }

  // 401s.
  {
    const r = await post('/mcp', { body: call('p-401-delete', 'delete_everything') });
    const c = challenge(r.www);
    check('no token, tools/call delete_everything -> 401, scope lists every scope the call needs (mcp:tools mcp:admin), resource_metadata',
      r.status === 401 && c?.params.resource_metadata === PRM_URL && sameSet(scopeSet(c?.params.scope), new Set(['mcp:tools', 'mcp:admin'])), brief(r));
  }
  {
    const r = await post('/mcp', { token: 'not.a.token', body: rpc('p-401-garbage', 'tools/list') });
    const c = challenge(r.www);
    check('malformed token -> 401 error="invalid_token" with resource_metadata (RFC 6750 3.1, RFC 9728 5.1)',
      r.status === 401 && c?.params.error === 'invalid_token' && c?.params.resource_metadata === PRM_URL, brief(r));
  }
  {
    // A token the TokenPolicy accepts (same issuer, an audience it lists) but not issued for the
    // MCP resource: the MCP route must refuse it (RFC 8707; MCP: "MUST validate that access
    // tokens were issued specifically for them"), as 401 and not as 403.
    const tr = await fetch(`${ISSUER}/token`, {
      method: 'POST',
      headers: {
        'content-type': 'application/x-www-form-urlencoded',
        authorization: `Basic ${Buffer.from('orders-client:orders-client-secret').toString('base64')}`,
      },
      body: new URLSearchParams({ grant_type: 'client_credentials', scope: 'orders:read', resource: process.env.OTHER_AUDIENCE }),
    });
    const other = (await tr.json()).access_token;
    check('a token for another audience was minted', typeof other === 'string' && claims(other).aud === process.env.OTHER_AUDIENCE);
    const r = await post('/mcp', { token: other, body: rpc('p-401-audience', 'tools/list') });
    const c = challenge(r.www);
    check(`token with aud ${process.env.OTHER_AUDIENCE} (accepted by the policy, not the MCP resource) -> 401 invalid_token`,
      r.status === 401 && c?.params.error === 'invalid_token' && c?.params.resource_metadata === PRM_URL, brief(r));
  }
  {
    const r = await post('/mcp', { query: `?access_token=${toolsOnly}`, body: rpc('p-query-token', 'tools/list') });
    check('token in the query string -> refused (400/401)', r.status === 400 || r.status === 401, brief(r));
  }

  // Allowed calls.
  {
    const r = await post('/mcp', { token: toolsOnly, body: call('p-ok-weather', 'get_weather', { city: 'Bergen' }) });
    check('mcp:tools token, get_weather -> 200 and the tool\'s answer', r.status === 200 && resultText(r) === 'Weather in Bergen: sunny, 21°C', brief(r));
  }
  {
    const origin = new URL(GATEWAY).origin;
    const r = await post('/mcp', { token: toolsOnly, headers: { origin }, body: call('p-ok-origin', 'get_weather', { city: 'Oslo' }) });
    check(`Origin ${origin} (the resource's own origin) -> 200`, r.status === 200, brief(r));
  }
  {
    const b64 = `=?base64?${Buffer.from('get_weather').toString('base64')}?=`;
    const r = await post('/mcp', { token: toolsOnly, headers: { 'mcp-name': b64 }, body: call('p-ok-b64', 'get_weather', { city: 'Tromsø' }) });
    check('Mcp-Name in the Base64 form (=?base64?...?=) decoded and matched -> 200', r.status === 200, brief(r));
  }
  {
    const r = await post('/mcp', { token: admin, body: call('p-ok-admin', 'delete_everything') });
    check('mcp:tools+mcp:admin token, delete_everything -> 200', r.status === 200 && resultText(r) === 'deleted everything', brief(r));
  }

  // Refusals that must not reach the MCP server (their ids are checked against /__seen below).
  const mustNotReach = [];
  const refuse = async (name, id, req, expect) => {
    const r = await post(req.path ?? '/mcp', req);
    mustNotReach.push([name, id]);
    check(name, expect(r), brief(r));
    return r;
  };
  await refuse('mcp:tools token, delete_everything -> 403 insufficient_scope, scope="mcp:tools mcp:admin", resource_metadata', 'p-403-delete',
    { token: toolsOnly, body: call('p-403-delete', 'delete_everything') },
    (r) => { const c = challenge(r.www); return r.status === 403 && c?.params.error === 'insufficient_scope' && sameSet(scopeSet(c.params.scope), new Set(['mcp:tools', 'mcp:admin'])) && c.params.resource_metadata === PRM_URL; });
  await refuse('Mcp-Name in Base64 naming delete_everything, mcp:tools token -> 403 (decoded before the rules)', 'p-403-b64',
    { token: toolsOnly, headers: { 'mcp-name': `=?base64?${Buffer.from('delete_everything').toString('base64')}?=` }, body: call('p-403-b64', 'delete_everything') },
    (r) => r.status === 403);
  await refuse('Mcp-Name get_weather but the body calls delete_everything -> 400 (header/body mismatch)', 'p-400-smuggle',
    { token: toolsOnly, headers: { 'mcp-name': 'get_weather' }, body: call('p-400-smuggle', 'delete_everything') },
    (r) => r.status === 400);
  await refuse('Mcp-Name differs only in case (DELETE_EVERYTHING) -> 400 (values are case-sensitive)', 'p-400-case',
    { token: admin, headers: { 'mcp-name': 'DELETE_EVERYTHING' }, body: call('p-400-case', 'delete_everything') },
    (r) => r.status === 400);
  await refuse('two Mcp-Name headers (get_weather, delete_everything) -> 400', 'p-400-twice',
    { token: toolsOnly, headers: { 'mcp-name': ['get_weather', 'delete_everything'] }, body: call('p-400-twice', 'delete_everything') },
    (r) => r.status === 400);
  await refuse('body with a duplicate "name" key (get_weather, then delete_everything), Mcp-Name get_weather -> refused', 'p-400-dupkey',
    { token: toolsOnly, headers: { 'mcp-method': 'tools/call', 'mcp-name': 'get_weather' },
      body: `{"jsonrpc":"2.0","id":"p-400-dupkey","method":"tools/call","params":{"name":"get_weather","name":"delete_everything","arguments":{},"_meta":${JSON.stringify(META)}}}` },
    (r) => r.status === 400 || r.status === 403);
  await refuse('Mcp-Method tools/list but the body is tools/call -> 400', 'p-400-method',
    { token: toolsOnly, headers: { 'mcp-method': 'tools/list', 'mcp-name': undefined }, body: call('p-400-method', 'get_weather', { city: 'x' }) },
    (r) => r.status === 400);
  await refuse('no Mcp-Method -> 400 (required while mcp.rules exist)', 'p-400-nomethod',
    { token: toolsOnly, headers: { 'mcp-method': undefined }, body: rpc('p-400-nomethod', 'tools/list') },
    (r) => r.status === 400);
  await refuse('tools/call without Mcp-Name -> 400', 'p-400-noname',
    { token: toolsOnly, headers: { 'mcp-name': undefined }, body: call('p-400-noname', 'get_weather', { city: 'x' }) },
    (r) => r.status === 400);
  await refuse('JSON-RPC batch -> 400', 'p-400-batch',
    { token: toolsOnly, headers: { 'mcp-method': 'tools/call', 'mcp-name': 'get_weather' }, body: JSON.stringify([call('p-400-batch', 'get_weather', { city: 'x' })]) },
    (r) => r.status === 400);
  await refuse('MCP-Protocol-Version 2025-11-25 -> 400 (older than minProtocolVersion)', 'p-400-oldversion',
    { token: toolsOnly, headers: { 'mcp-protocol-version': '2025-11-25' }, body: rpc('p-400-oldversion', 'tools/list') },
    (r) => r.status === 400);
  await refuse('no MCP-Protocol-Version -> 400', 'p-400-noversion',
    { token: toolsOnly, headers: { 'mcp-protocol-version': undefined }, body: rpc('p-400-noversion', 'tools/list') },
    (r) => r.status === 400);
  await refuse('Origin http://evil.example.com with a valid token -> 403 (DNS rebinding)', 'p-403-origin',
    { token: toolsOnly, headers: { origin: 'http://evil.example.com' }, body: call('p-403-origin', 'get_weather', { city: 'x' }) },
    (r) => r.status === 403);
  await refuse('Origin null -> 403', 'p-403-nullorigin',
    { token: toolsOnly, headers: { origin: 'null' }, body: call('p-403-nullorigin', 'get_weather', { city: 'x' }) },
    (r) => r.status === 403);
  await refuse('Host evil.example.com -> 4xx (not this route)', 'p-4xx-host',
    { token: toolsOnly, headers: { host: 'evil.example.com' }, body: call('p-4xx-host', 'get_weather', { city: 'x' }) },
    (r) => r.status >= 400 && r.status < 500);

  // The public route (auth: none, mcp.rules [{tools/call delete_everything, deny: true}]).
  {
    const r = await post('/public/mcp', { token: toolsOnly, body: call('p-public-token', 'get_weather', { city: 'Oslo' }) });
    check('public route: get_weather with an Authorization header -> 200 (the header is dropped, see upstream checks)', r.status === 200 && resultText(r) === 'Weather in Oslo: sunny, 21°C', brief(r));
  }
  await refuse('public route: Origin http://evil.example.com -> 403', 'p-public-origin',
    { path: '/public/mcp', headers: { origin: 'http://evil.example.com' }, body: rpc('p-public-origin', 'tools/list') },
    (r) => r.status === 403);
  await refuse('public route: Mcp-Name get_weather, body delete_everything -> 400', 'p-public-smuggle',
    { path: '/public/mcp', headers: { 'mcp-name': 'get_weather' }, body: call('p-public-smuggle', 'delete_everything') },
    (r) => r.status === 400);
  await refuse('public route: tools/call delete_everything, which an mcp rule denies (deny: true, "refuse the call whatever the token holds") -> 403', 'p-public-deny',
    { path: '/public/mcp', body: call('p-public-deny', 'delete_everything') },
    (r) => r.status === 403);

  const s = await seen();
  const ids = new Set(s.map((e) => e.body?.id).filter((x) => x !== undefined));
  const reached = mustNotReach.filter(([, id]) => ids.has(id));
  check('none of the refused requests reached the MCP server', reached.length === 0, reached.map(([n, id]) => `${id}: ${n}`).join('\n     '));
  const fc = s.find((e) => e.body?.params?.name === 'get_forecast');
  check('Mcp-Param-Region reached the MCP server unchanged', fc?.headers['mcp-param-region'] === 'Nordland', fc?.headers);
  done();
}

// ---------------------------------------------------------------------------------------------------
async function upstreamSection() {
  // /direct/mcp: the conformance suite's runs against server.mjs itself, not through the gateway.
  const s = (await seen()).filter((e) => e.path.split('?')[0] !== '/direct/mcp');
  const all = tokens();
  const cred = `Bearer ${process.env.UPSTREAM_CREDENTIAL}`;
  check('the MCP server saw requests', s.length > 0, s.length);
  const priv = s.filter((e) => e.path.split('?')[0] === '/mcp');
  const pub = s.filter((e) => e.path.split('?')[0] === '/public/mcp');
  const other = s.filter((e) => !['/mcp', '/public/mcp'].includes(e.path.split('?')[0]));
  check('every request on the token route carried exactly the gateway\'s credential (Authorization: Bearer <Secret>)',
    priv.length > 0 && priv.every((e) => e.headers.authorization === cred && e.rawHeaders.filter((h, i) => i % 2 === 0 && h.toLowerCase() === 'authorization').length === 1),
    priv.filter((e) => e.headers.authorization !== cred).map((e) => e.headers.authorization?.slice(0, 40)));
  check('no request on the public route carried an Authorization header', pub.every((e) => e.headers.authorization === undefined),
    pub.filter((e) => e.headers.authorization !== undefined).map((e) => e.body?.id));
  check('no other path reached the MCP server', other.length === 0, other.map((e) => e.path));
  // No client token anywhere (any header, any value), nor its hash as some gateways forward.
  const needles = all.flatMap((t) => [t, t.split('.')[2], createHash('sha256').update(t).digest('base64url')]);
  const leaks = s.filter((e) => e.rawHeaders.some((v, i) => i % 2 === 1 && needles.some((n) => v.includes(n))));
  check(`none of the ${all.length} client tokens reached the MCP server in any header (no token passthrough)`, all.length >= 4 && leaks.length === 0,
    leaks.map((e) => e.rawHeaders));
  // Everything the gateway let through agrees with its headers (both routes have mcp.rules).
  const bad = [];
  for (const e of s) {
    if (e.method !== 'POST') continue;
    const b = e.body;
    const why = [];
    if (!b || typeof b !== 'object' || Array.isArray(b)) why.push('not one JSON-RPC message');
    else if (b.method !== undefined) {
      if (e.headers['mcp-method'] !== b.method) why.push(`Mcp-Method ${e.headers['mcp-method']} vs ${b.method}`);
      const field = { 'tools/call': 'name', 'prompts/get': 'name', 'resources/read': 'uri' }[b.method];
      if (field) {
        let n = e.headers['mcp-name'];
        const m = /^=\?base64\?(.*)\?=$/.exec(n ?? '');
        if (m) n = Buffer.from(m[1], 'base64').toString('utf8');
        if (n?.trim() !== b.params?.[field]) why.push(`Mcp-Name ${e.headers['mcp-name']} vs ${b.params?.[field]}`);
      }
      const v = e.headers['mcp-protocol-version'];
      if (!/^\d{4}-\d{2}-\d{2}$/.test(v ?? '') || v < VERSION) why.push(`MCP-Protocol-Version ${v}`);
    }
    if (why.length) bad.push({ id: b?.id, path: e.path, why });
  }
  check(`every POST the MCP server got (${s.filter((e) => e.method === 'POST').length}) had Mcp-Method/Mcp-Name agreeing with its body and MCP-Protocol-Version >= ${VERSION}`,
    bad.length === 0, bad);
  const denied = s.filter((e) => e.path.startsWith('/public/') && e.body?.params?.name === 'delete_everything');
  check('delete_everything never reached the MCP server through the public route (deny: true)', denied.length === 0,
    denied.map((e) => ({ id: e.body?.id, mcpName: e.headers['mcp-name'] })));
  done();
}

const [section, ...args] = process.argv.slice(2);
try {
  if (section === 'client') await clientSection(args[0], args[1]);
  else if (section === 'legacy') await legacySection(args[0]);
  else if (section === 'probes') await probesSection();
  else if (section === 'upstream') await upstreamSection();
  else {
    console.error('usage: node checks.mjs client|legacy|probes|upstream ...');
    process.exit(2);
  }
} catch (e) {
  check(`${section}: ran to the end`, false, String(e?.stack ?? e));
  done();
}
