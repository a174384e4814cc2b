// An MCP client with the official TypeScript SDK v2 that goes through the gateway and signs in
// with OAuth 2.1 (authorization code + PKCE + RFC 8707 resource) at the real OpenID provider
// (e2e/oidc/provider.mjs with its auto-login/auto-consent interaction).
//
//   MCP_URL=http://127.0.0.1:<gw>/mcp node client.mjs
//
// Env:
//   MCP_URL        the MCP endpoint (through the gateway)                          (required)
//   MCP_CLIENT_ID  a pre-registered public client (e.g. mcp-client); unset = RFC 7591 dynamic registration
//   MCP_ERA        auto (default: server/discover, falls back to initialize) | legacy | 2026-07-28 (pin)
//   REDIRECT_URL   default http://127.0.0.1:8090/callback (never listened on: the code is read off the Location header)
//   TIMEOUT_MS     default 30000
//   MCP_TOKENS_FILE  optional: every access token the client got is written there (JSON array, in
//                  order), so a test can check that none of them ever reached the MCP server
//
// The authorization server is NOT configured here: the SDK finds it from the gateway's 401
// (WWW-Authenticate resource_metadata -> RFC 9728 document -> authorization_servers[0] ->
// RFC 8414 / OIDC discovery). The "browser" is fetch following redirects with a cookie jar.
//
// Prints ONE line of JSON on stdout, last, for the test to assert on (scripts/mcp-tests.sh):
//   {"ok":true,"era":"modern","registered":"dynamic","authorizations":2,
//    "tools":["delete_everything","get_forecast","get_weather"],
//    "weather":"Weather in Oslo: sunny, 21°C","weatherScopes":"mcp:tools",
//    "forecast":"Forecast for Nordland: sunny for 3 day(s)",
//    "delete":{"status":"stepped_up","text":"deleted everything","scopes":"mcp:admin mcp:tools"},
//    "resources":["http://127.0.0.1:<gw>/mcp"],"errors":[],
//    "trace":[{"method":"POST","path":"/mcp","mcpMethod":"server/discover","mcpName":null,
//              "status":401,"wwwAuthenticate":"Bearer ...","bearer":false}, ...]}
// `trace` lists every HTTP exchange with the MCP server's origin (the gateway), including the
// RFC 9728 metadata fetches; `bearer` says whether an Authorization header was sent.
// `delete.status` is "stepped_up" (403 insufficient_scope, re-authorized with the union scope,
// retried), "forbidden" (403 again after step-up), "allowed_without_step_up" (no 403: the gateway
// did not enforce the scope) or "error". `ok` is false (exit 1) if anything before that failed.
import {
  Client,
  StreamableHTTPClientTransport,
  UnauthorizedError,
  InsufficientScopeError,
} from '@modelcontextprotocol/client';

const MCP_URL = process.env.MCP_URL;
if (!MCP_URL) {
  console.error('MCP_URL is required');
  process.exit(2);
}
const REDIRECT_URL = process.env.REDIRECT_URL ?? 'http://127.0.0.1:8090/callback';
const ERA = process.env.MCP_ERA ?? 'auto';
const TIMEOUT_MS = Number(process.env.TIMEOUT_MS ?? 30000);
setTimeout(() => {
  console.log(JSON.stringify({ ok: false, errors: [`timeout after ${TIMEOUT_MS} ms`] }));
  process.exit(1);
}, TIMEOUT_MS).unref();

const result = { ok: false, era: null, registered: null, authorizations: 0, tools: [], resources: [], errors: [], trace: [] };
const accessTokens = [];
const TOKENS_FILE = process.env.MCP_TOKENS_FILE;
const MCP_ORIGIN = new URL(MCP_URL).origin;

// The transport's fetch (MCP requests, and the SDK's OAuth discovery and token requests):
// records what the gateway answered.
async function tracingFetch(input, init) {
  const req = new Request(input, init);
  const res = await fetch(req);
  const url = new URL(req.url);
  if (url.origin === MCP_ORIGIN) {
    result.trace.push({
      method: req.method,
      path: url.pathname,
      mcpMethod: req.headers.get('mcp-method'),
      mcpName: req.headers.get('mcp-name'),
      protocolVersion: req.headers.get('mcp-protocol-version'),
      status: res.status,
      wwwAuthenticate: res.headers.get('www-authenticate'),
      bearer: req.headers.has('authorization'),
    });
  }
  return res;
}
const log = (...a) => console.error('[mcp-client]', ...a);

// ---- OAuthClientProvider: in-memory storage + capture of the authorization URL ----------------
class TestOAuthProvider {
  constructor() {
    this.pendingAuthorizationUrl = undefined;
    this._tokens = undefined;
    this._verifier = undefined;
    this._discovery = undefined;
    this._client = process.env.MCP_CLIENT_ID ? { client_id: process.env.MCP_CLIENT_ID } : undefined;
    result.registered = this._client ? 'static' : 'dynamic';
  }
  get redirectUrl() { return REDIRECT_URL; }
  get clientMetadata() {
    return {
      client_name: 'Portcullis MCP test client',
      redirect_uris: [REDIRECT_URL],
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'none',
      application_type: 'native',
    };
  }
  clientInformation() { return this._client; }
  saveClientInformation(info) { this._client = info; }
  tokens() { return this._tokens; }
  saveTokens(tokens) {
    this._tokens = tokens;
    if (tokens?.access_token && !accessTokens.includes(tokens.access_token)) accessTokens.push(tokens.access_token);
  }
  state() { this.lastState = crypto.randomUUID(); return this.lastState; }
  redirectToAuthorization(url) {
    this.pendingAuthorizationUrl = url;
    result.resources.push(url.searchParams.get('resource'));
    log('authorize', url.origin + url.pathname, 'scope=', url.searchParams.get('scope'), 'resource=', url.searchParams.get('resource'));
  }
  saveCodeVerifier(v) { this._verifier = v; }
  codeVerifier() {
    if (!this._verifier) throw new Error('no code verifier');
    return this._verifier;
  }
  saveDiscoveryState(s) { this._discovery = s; }
  discoveryState() { return this._discovery; }
  invalidateCredentials(scope) {
    if (scope === 'all' || scope === 'client') this._client = process.env.MCP_CLIENT_ID ? this._client : undefined;
    if (scope === 'all' || scope === 'tokens') this._tokens = undefined;
    if (scope === 'all' || scope === 'verifier') this._verifier = undefined;
    if (scope === 'all' || scope === 'discovery') this._discovery = undefined;
  }
}

// ---- the "browser": follow the authorization redirects, keep cookies --------------------------
const jar = new Map();
async function browse(authorizationUrl) {
  let next = authorizationUrl.href;
  for (let hop = 0; hop < 15; hop++) {
    const cookie = [...jar].map(([k, v]) => `${k}=${v}`).join('; ');
    const res = await fetch(next, { redirect: 'manual', headers: cookie ? { cookie } : {} });
    for (const sc of res.headers.getSetCookie()) {
      const pair = sc.split(';', 1)[0];
      const eq = pair.indexOf('=');
      if (eq > 0) jar.set(pair.slice(0, eq).trim(), pair.slice(eq + 1).trim());
    }
    const location = res.headers.get('location');
    if (!location || res.status < 300 || res.status >= 400) {
      const body = await res.text().catch(() => '');
      throw new Error(`authorization: expected a redirect at hop ${hop} (${next}), got ${res.status}: ${body.slice(0, 300)}`);
    }
    const to = new URL(location, next);
    if (to.href.startsWith(REDIRECT_URL)) {
      const err = to.searchParams.get('error');
      if (err) throw new Error(`authorization error ${err}: ${to.searchParams.get('error_description') ?? ''}`);
      if (!to.searchParams.get('code')) throw new Error(`callback without code: ${to.href}`);
      return to.searchParams;
    }
    next = to.href;
  }
  throw new Error('authorization: too many redirects');
}

const provider = new TestOAuthProvider();
const versionNegotiation = ERA === 'legacy' ? { mode: 'legacy' } : ERA === 'auto' ? { mode: 'auto' } : { mode: { pin: ERA } };
let client;
let transport;

function newTransport() {
  // onInsufficientScope 'reauthorize' (the default): on 403 insufficient_scope the SDK computes
  // the union of the old and challenged scopes and calls auth() again, which ends in
  // redirectToAuthorization + UnauthorizedError for an interactive grant.
  return new StreamableHTTPClientTransport(new URL(MCP_URL), {
    authProvider: provider,
    onInsufficientScope: 'reauthorize',
    maxStepUpRetries: 1,
    fetch: tracingFetch,
  });
}

async function connect() {
  client = new Client({ name: 'portcullis-mcp-test-client', version: '1.0.0' }, { versionNegotiation });
  transport = newTransport();
  await client.connect(transport);
}

// Runs fn; when the SDK needs the user at the authorization server (UnauthorizedError after it
// called redirectToAuthorization), plays the browser, finishes the code exchange, reconnects on
// a fresh transport and runs fn again.
async function withAuthorization(label, fn, { reconnect = true } = {}) {
  for (let attempt = 0; ; attempt++) {
    try {
      return await fn();
    } catch (e) {
      const root = e instanceof UnauthorizedError ? e : e?.data?.cause;
      if (!(root instanceof UnauthorizedError) || !provider.pendingAuthorizationUrl || attempt >= 2) throw e;
      log(`${label}: authorization needed (attempt ${attempt + 1})`);
      const params = await browse(provider.pendingAuthorizationUrl);
      provider.pendingAuthorizationUrl = undefined;
      if (params.get('state') !== provider.lastState) throw new Error('state mismatch on the callback');
      await transport.finishAuth(params); // validates iss (RFC 9207), POSTs code + code_verifier + resource
      result.authorizations += 1;
      if (reconnect) await connect();
    }
  }
}

const tokenScopes = () => provider.tokens()?.scope ?? null;

try {
  await withAuthorization('connect', connect, { reconnect: false });
  result.era = client.getProtocolEra?.() ?? null;

  const { tools } = await withAuthorization('tools/list', () => client.listTools());
  result.tools = tools.map((t) => t.name).sort();

  const weather = await withAuthorization('get_weather', () => client.callTool({ name: 'get_weather', arguments: { city: 'Oslo' } }));
  result.weather = weather.content?.[0]?.text ?? null;
  result.weatherScopes = tokenScopes();

  // x-mcp-header (SEP-2243): the SDK mirrors `region` into Mcp-Param-Region, which the gateway
  // must forward untouched for the MCP server to check it against the body.
  const forecast = await withAuthorization('get_forecast', () => client.callTool({ name: 'get_forecast', arguments: { region: 'Nordland', days: 3 } }));
  result.forecast = forecast.content?.[0]?.text ?? null;

  const before = result.authorizations;
  try {
    const del = await withAuthorization('delete_everything', () => client.callTool({ name: 'delete_everything', arguments: {} }));
    result.delete = {
      status: result.authorizations > before ? 'stepped_up' : 'allowed_without_step_up',
      text: del.content?.[0]?.text ?? null,
      isError: del.isError ?? false,
      scopes: tokenScopes(),
    };
  } catch (e) {
    const forbidden = e instanceof InsufficientScopeError || e?.status === 403 || e?.data?.status === 403 || /403|insufficient_scope/.test(String(e?.message));
    result.delete = { status: forbidden ? 'forbidden' : 'error', error: String(e?.message ?? e), scopes: tokenScopes() };
  }
  result.ok = true;
} catch (e) {
  result.errors.push(String(e?.stack ?? e));
} finally {
  await client?.close().catch(() => {});
}
if (TOKENS_FILE) {
  const { writeFileSync } = await import('node:fs');
  writeFileSync(TOKENS_FILE, JSON.stringify(accessTokens));
}
console.log(JSON.stringify(result));
process.exit(result.ok ? 0 : 1);
