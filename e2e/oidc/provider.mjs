// A real OpenID provider for Portcullis's tests: panva/node-oidc-provider, configured for
// client credentials, JWT and opaque access tokens (resource indicators), introspection
// (RFC 7662), revocation (RFC 7009) and a JWKS that can rotate.
//
//   node provider.mjs            PORT (issuer http://127.0.0.1:PORT), ADMIN_PORT
//
// Prints `READY <port> <admin port>` when listening. The admin port drives the scenario:
//   POST /rotate   new signing key; the old one stays published (tokens it signed verify)
//   POST /retire   only the newest key stays published
//   POST /stop     the provider port stops answering (connections refused)
//   POST /start    it answers again
//   POST /max-age/N  the JWKS is served with `Cache-Control: public, max-age=N` (default 3600)
//   GET  /stats    {"jwks": n, "discovery": n, "introspection": n, ...} requests served
//   POST /backchannel-logout  {"uri": "...", "sub": "...", "sid": "..."}  oidc-provider itself
//                  (features.backchannelLogout, Client#backchannelLogout(sub, sid)) POSTs a
//                  logout token (OpenID Connect Back-Channel Logout 1.0) to `uri`, as client
//                  `logout-client` (aud), signed RS256 with the provider's current key,
//                  typ `logout+jwt`, exp = iat + 120; `sid` is included only when given. Answers
//                  200 {"status": <HTTP status the receiver answered>, "logout_token": "..."}
//                  (502 {"error"} when the receiver could not be reached). `logout-client` is
//                  (re)registered with backchannel_logout_uri = uri on every call. The feature
//                  is off until the first call, which turns it on by rebuilding the provider
//                  (same keys; like /rotate, that forgets opaque tokens minted before it);
//                  BACKCHANNEL_LOGOUT=1 in the environment turns it on from the start instead.
//                  With it on, discovery also shows backchannel_logout_supported and
//                  backchannel_logout_session_supported, and loopback delivery is allowed.
//   POST /mint  {"sub": "...", "aud": "...", "scope": "...", "sid": "...", "ttl": 300}  an RS256
//                  access token (typ at+jwt) for that user, signed with the provider's current
//                  key: a user's token without an interactive login (the identity-event tests
//                  log out many users). Answers 200 {"token": "..."}.
//
// MCP (tests/mcp, scripts/mcp-tests.sh): resources http://127.0.0.1:<port>/mcp[/...] (and
// localhost, and MCP_RESOURCES) get RS256 JWTs with aud = the resource and scopes
// mcp:tools mcp:admin; the public client `mcp-client` (PKCE, native: any loopback port of
// its redirect URIs), open dynamic registration at /reg, and an automatic login + consent
// (user alice) at /interaction/<uid> for the authorization-code flow.
//
// DPoP (RFC 9449; tests/dpop, scripts/dpop-tests.sh): features.dPoP is on (as oidc-provider 9
// has it by default; no nonces, replayed proofs refused, proof algorithms ES256 Ed25519 EdDSA).
// A token request with a `DPoP` proof gets a JWT access token bound to the proof's key
// (`cnf.jkt`, RFC 7638 thumbprint) and `token_type` DPoP; without a proof it is a Bearer token
// as before. The confidential client `dpop-client` (secret `dpop-client-secret`,
// client_credentials, dpop_bound_access_tokens) must send a proof: its tokens are always bound.
//
// Mutual TLS (RFC 8705; tests/mtls, scripts/mtls-tests.sh): features.mTLS is on with
// certificateBoundAccessTokens and selfSignedTlsClientAuth; getCertificate is the client
// certificate of the TLS connection the request came on (none on the plain-HTTP port, so
// nothing changes there). Optional, each only when its variables are set:
//   MTLS_PORT, MTLS_CERT, MTLS_KEY   a second, HTTPS listener on 127.0.0.1:MTLS_PORT (server
//                  certificate and key, PEM) that asks for a client certificate (requestCert;
//                  any certificate is taken, rejectUnauthorized false: self-signed client
//                  authentication matches it by thumbprint, not by chain). Same provider, same
//                  issuer (http://127.0.0.1:PORT); discovery gains `mtls_endpoint_aliases`
//                  (RFC 8705 section 5) for its token, introspection and revocation endpoints.
//                  POST /stop and /start do not touch it.
//   MTLS_CLIENT_CERT  a PEM certificate: registers the confidential client `mtls-client`
//                  (client_credentials, token_endpoint_auth_method self_signed_tls_client_auth
//                  (RFC 8705 section 2.2) with that certificate in its jwks (x5c),
//                  tls_client_certificate_bound_access_tokens). It must come to the mTLS
//                  listener with that certificate; its access tokens carry
//                  `cnf["x5t#S256"]`, the base64url SHA-256 of the certificate's DER (section
//                  3.1); for resource https://api.portcullis.test they are JWTs as above.
//   MTLS_SELF_CLIENT_CERT  a PEM certificate, typically self-signed (issued by no CA anyone
//                  trusts): registers a second confidential client `mtls-self-client`, the same
//                  as `mtls-client` (self_signed_tls_client_auth with that certificate in its
//                  jwks, client_credentials, tls_client_certificate_bound_access_tokens) but
//                  for that certificate; its tokens carry that certificate's x5t#S256.
//                  Either variable may be set without the other.
// Discovery also shows tls_client_certificate_bound_access_tokens and
// self_signed_tls_client_auth among the token endpoint's authentication methods.
import http from 'node:http';
import https from 'node:https';
import { readFileSync } from 'node:fs';
import { X509Certificate, generateKeyPairSync, randomUUID } from 'node:crypto';
import Provider from 'oidc-provider';

const port = Number(process.env.PORT);
const adminPort = Number(process.env.ADMIN_PORT);
const issuer = `http://127.0.0.1:${port}`;

// Resources (audiences): JWT access tokens, short-lived JWTs, and opaque tokens.
export const API = 'https://api.portcullis.test';
export const SHORT = 'https://short.portcullis.test';
export const OPAQUE = 'https://opaque.portcullis.test';
const SCOPES = ['orders:read', 'orders:write', 'admin'];

// MCP (Model Context Protocol) resources: the gateway's MCP endpoints, e.g.
// http://127.0.0.1:<gateway port>/mcp. Their ports are only known at run time, so besides the
// explicit MCP_RESOURCES list (space separated) any loopback http URL whose path is /mcp or
// below is an MCP resource. Tokens for them are JWTs whose `aud` is that URL.
const MCP_SCOPES = ['mcp:tools', 'mcp:admin'];
const MCP_RESOURCES = (process.env.MCP_RESOURCES ?? '').split(/\s+/).filter(Boolean);
const isMcpResource = (r) => MCP_RESOURCES.includes(r)
  || /^http:\/\/(127\.0\.0\.1|localhost):\d+\/mcp(\/[^?#]*)?$/.test(r);
// The one end user of the tests; the interaction below signs them in and consents for them.
const ACCOUNT = 'alice';

function newKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), alg: 'RS256', use: 'sig' };
}

// Mutual TLS (RFC 8705): the optional HTTPS listener and the certificate of `mtls-client`.
const mtlsPort = process.env.MTLS_PORT ? Number(process.env.MTLS_PORT) : undefined;
const mtlsBase = mtlsPort ? `https://127.0.0.1:${mtlsPort}` : undefined;
const certFrom = (name) => (process.env[name]
  ? new X509Certificate(readFileSync(process.env[name]))
  : undefined);
const mtlsClient = certFrom('MTLS_CLIENT_CERT');
const mtlsSelfClient = certFrom('MTLS_SELF_CLIENT_CERT');

// A client that authenticates with its certificate (self_signed_tls_client_auth: the
// certificate in jwks.keys[0].x5c, matched by SHA-256 thumbprint) and gets certificate-bound
// tokens only.
function mtlsClientMetadata(clientId, cert) {
  return {
    client_id: clientId,
    token_endpoint_auth_method: 'self_signed_tls_client_auth',
    tls_client_certificate_bound_access_tokens: true,
    jwks: {
      keys: [{
        ...cert.publicKey.export({ format: 'jwk' }),
        x5c: [cert.raw.toString('base64')],
      }],
    },
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    scope: SCOPES.join(' '),
  };
}

// The client certificate of the TLS connection a request came on, if any (the plain-HTTP
// listener has none). oidc-provider takes an X509Certificate (its thumbprint is of `raw`).
function getCertificate(ctx) {
  const socket = ctx.socket ?? ctx.req?.socket;
  const peer = typeof socket?.getPeerCertificate === 'function' ? socket.getPeerCertificate() : null;
  if (!peer?.raw) return undefined;
  return new X509Certificate(peer.raw);
}

let keys = [newKey()];
let maxAge = 3600;
// Back-channel logout: off until the first POST /backchannel-logout (or BACKCHANNEL_LOGOUT=1).
let backchannel = process.env.BACKCHANNEL_LOGOUT === '1';
let lastLogout; // { status, logoutToken } of the provider's last outgoing logout request
const stats = { jwks: 0, discovery: 0, introspection: 0, token: 0, interactions: 0, registration: 0 };

function makeProvider() {
  const provider = new Provider(issuer, {
    clients: [
      {
        client_id: 'orders-client',
        client_secret: 'orders-client-secret',
        grant_types: ['client_credentials'],
        redirect_uris: [],
        response_types: [],
        scope: SCOPES.join(' '),
      },
      {
        // The MCP test client (tests/mcp/client.mjs with MCP_CLIENT_ID=mcp-client): a public
        // client (PKCE, no secret). 127.0.0.1:3000/callback is the conformance suite's
        // `authorization --client-id mcp-client` default callback.
        client_id: 'mcp-client',
        token_endpoint_auth_method: 'none',
        application_type: 'native',
        grant_types: ['authorization_code'],
        response_types: ['code'],
        redirect_uris: ['http://127.0.0.1:8090/callback', 'http://127.0.0.1:3000/callback'],
      },
      {
        // The DPoP test client (tests/dpop): client_credentials only with a DPoP proof
        // (dpop_bound_access_tokens), so every token it gets carries cnf.jkt.
        client_id: 'dpop-client',
        client_secret: 'dpop-client-secret',
        grant_types: ['client_credentials'],
        redirect_uris: [],
        response_types: [],
        scope: SCOPES.join(' '),
        dpop_bound_access_tokens: true,
      },
      // The mTLS test clients (tests/mtls): `mtls-client` (MTLS_CLIENT_CERT, from the test
      // CA) and `mtls-self-client` (MTLS_SELF_CLIENT_CERT, self-signed).
      ...(mtlsClient ? [mtlsClientMetadata('mtls-client', mtlsClient)] : []),
      ...(mtlsSelfClient ? [mtlsClientMetadata('mtls-self-client', mtlsSelfClient)] : []),
      {
        // The gateway's own client: it only introspects.
        client_id: 'portcullis-gateway',
        client_secret: 'portcullis-gateway-secret',
        grant_types: [],
        redirect_uris: [],
        response_types: [],
      },
    ],
    jwks: { keys },
    scopes: [...SCOPES, ...MCP_SCOPES],
    // oidc-provider's defaults plus RFC 8705 section 2.2 (features.mTLS.selfSignedTlsClientAuth
    // alone does not make the method registrable).
    clientAuthMethods: [
      'client_secret_basic', 'client_secret_jwt', 'client_secret_post', 'private_key_jwt', 'none',
      'self_signed_tls_client_auth',
    ],
    // RFC 8705 section 5: where a client that authenticates with its certificate sends its
    // requests (the HTTPS listener), when there is one.
    ...(mtlsBase ? {
      discovery: {
        claim_types_supported: ['normal'],
        mtls_endpoint_aliases: {
          token_endpoint: `${mtlsBase}/token`,
          introspection_endpoint: `${mtlsBase}/token/introspection`,
          revocation_endpoint: `${mtlsBase}/token/revocation`,
        },
      },
    } : {}),
    // The MCP SDK registers (RFC 7591) with `scope` = the scope of the first 401 challenge, and
    // oidc-provider then refuses any other scope for that client (invalid_scope), which breaks
    // step-up (403 insufficient_scope -> a wider scope). Drop `scope` from dynamic registrations
    // so they may ask for any supported scope. Hook: the extraClientMetadata validator is called
    // with the whole metadata for every listed property.
    extraClientMetadata: {
      properties: ['x_portcullis_test'],
      validator(ctx, key, value, metadata) {
        if (ctx?.oidc?.route === 'registration') delete metadata.scope;
      },
    },
    // Every subject is a known account (the tests have one user, alice).
    findAccount: (ctx, sub) => ({ accountId: sub, claims: () => ({ sub }) }),
    // Where the authorization endpoint sends the user agent to log in / consent; the HTTP
    // server below answers it without a UI (see autoInteraction).
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    // oidc-provider refuses outgoing requests to special-use addresses (loopback included);
    // the back-channel logout receiver under test listens on 127.0.0.1.
    ...(backchannel ? { fetch: backchannelFetch } : {}),
    ttl: { ClientCredentials: (ctx, token) => token.resourceServer?.accessTokenTTL ?? 300 },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      // RFC 7591 dynamic client registration at POST /reg, open (no initial access token):
      // the MCP SDK registers itself when it has no client_id.
      registration: { enabled: true },
      // Only the gateway's client may introspect.
      introspection: {
        enabled: true,
        allowedPolicy: (ctx, client) => client.clientId === 'portcullis-gateway',
      },
      revocation: { enabled: true },
      // DPoP-bound access tokens (RFC 9449). The defaults, spelled out: no DPoP-Nonce
      // (requireNonce false, no nonceSecret), a proof's jti used once (allowReplay false).
      dPoP: { enabled: true, requireNonce: () => false, allowReplay: false },
      // Certificate-bound access tokens and self-signed certificate client authentication
      // (RFC 8705). Only clients registered with tls_client_certificate_bound_access_tokens
      // (mtls-client, mtls-self-client) get bound tokens; the others are as before.
      mTLS: {
        enabled: true,
        certificateBoundAccessTokens: true,
        selfSignedTlsClientAuth: true,
        getCertificate,
      },
      backchannelLogout: { enabled: backchannel },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => API,
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, resource) => {
          if (isMcpResource(resource)) {
            return {
              scope: MCP_SCOPES.join(' '),
              audience: resource,
              accessTokenTTL: 300,
              accessTokenFormat: 'jwt',
              jwt: { sign: { alg: 'RS256' } },
            };
          }
          if (![API, SHORT, OPAQUE].includes(resource)) {
            throw new Error(`unknown resource ${resource}`);
          }
          return {
            scope: SCOPES.join(' '),
            audience: resource,
            accessTokenTTL: resource === SHORT ? 2 : 300,
            accessTokenFormat: resource === OPAQUE ? 'opaque' : 'jwt',
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
    },
  });
  provider.proxy = false;
  provider.on('server_error', (ctx, err) => console.error('server_error', err));
  return provider;
}

async function backchannelFetch(url, { dispatcher, ...options }) {
  const logoutToken = new URLSearchParams(options.body).get('logout_token');
  const response = await globalThis.fetch(url, options);
  lastLogout = { status: response.status, logoutToken };
  return response;
}

let provider = makeProvider();
let handler = provider.callback();

// The login and consent "pages": no UI, the user is always alice and always consents to what
// was asked (OIDC scopes, claims, and the scopes of each requested resource indicator), then the
// provider redirects back to the authorization endpoint, which redirects to the client's
// redirect_uri with ?code=...&state=...&iss=... .
async function autoInteraction(req, res) {
  const details = await provider.interactionDetails(req, res);
  const { prompt, params, session } = details;
  let result;
  if (prompt.name === 'login') {
    result = { login: { accountId: ACCOUNT } };
  } else if (prompt.name === 'consent') {
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    const missing = prompt.details;
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    result = { consent: { grantId: await grant.save() } };
  } else {
    result = { error: 'access_denied', error_description: `unexpected prompt ${prompt.name}` };
  }
  stats.interactions += 1;
  await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
}

function onRequest(req, res) {
  const path = req.url.split('?')[0];
  if (path === '/jwks') {
    stats.jwks += 1;
    res.setHeader('Cache-Control', `public, max-age=${maxAge}`);
  }
  if (path === '/.well-known/openid-configuration') stats.discovery += 1;
  if (path === '/token/introspection') stats.introspection += 1;
  if (path === '/token') stats.token += 1;
  if (path === '/reg') stats.registration += 1;
  // oidc-provider answers access_denied ("no scope was granted") to an authorization request
  // without `scope`, which is valid OAuth and what the MCP conformance suite's
  // authorization-code-grant scenario sends: give such requests `scope=openid`.
  if (req.method === 'GET' && path === '/auth') {
    const u = new URL(req.url, issuer);
    if (!u.searchParams.has('scope')) {
      u.searchParams.set('scope', 'openid');
      req.url = u.pathname + u.search;
    }
  }
  if (req.method === 'GET' && path.startsWith('/interaction/')) {
    autoInteraction(req, res).catch((e) => {
      console.error('interaction', e);
      if (!res.headersSent) { res.writeHead(500); res.end(String(e)); }
    });
    return;
  }
  handler(req, res);
}
const server = http.createServer(onRequest);
const sockets = new Set();
server.on('connection', (s) => { sockets.add(s); s.on('close', () => sockets.delete(s)); });

function listen() {
  return new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
}

function rebuild() {
  provider = makeProvider();
  handler = provider.callback();
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString()));
    req.on('error', reject);
  });
}

// Makes oidc-provider send a logout token for (sub, sid) to `uri` as client `logout-client`.
async function backchannelLogout({ uri, sub, sid }) {
  if (!backchannel) {
    backchannel = true;
    rebuild();
  }
  // A dynamic client (the provider's adapter), so changing its URI needs no rebuild.
  await provider.Client.adapter.upsert('logout-client', {
    client_id: 'logout-client',
    client_secret: 'logout-client-secret',
    grant_types: [],
    redirect_uris: [],
    response_types: [],
    backchannel_logout_uri: uri,
    backchannel_logout_session_required: sid !== undefined,
  });
  const client = await provider.Client.find('logout-client');
  lastLogout = undefined;
  try {
    await client.backchannelLogout(sub, sid);
  } catch (e) {
    // A non-200/204 answer still counts as delivered: report what the receiver said.
    if (!lastLogout) return { code: 502, body: { error: String(e) } };
  }
  return { code: 200, body: { status: lastLogout.status, logout_token: lastLogout.logoutToken } };
}

const admin = http.createServer(async (req, res) => {
  const reply = (code, body) => {
    res.writeHead(code, { 'content-type': 'application/json' });
    res.end(JSON.stringify(body));
  };
  try {
    if (req.method === 'POST' && req.url === '/rotate') {
      keys = [newKey(), ...keys];
      rebuild();
      return reply(200, { kids: keys.map((k) => k.kid) });
    }
    if (req.method === 'POST' && req.url === '/retire') {
      keys = [keys[0]];
      rebuild();
      return reply(200, { kids: keys.map((k) => k.kid) });
    }
    if (req.method === 'POST' && req.url === '/stop') {
      await new Promise((resolve) => {
        server.close(() => resolve());
        for (const s of sockets) s.destroy();
      });
      return reply(200, { stopped: true });
    }
    if (req.method === 'POST' && req.url === '/start') {
      await listen();
      return reply(200, { started: true });
    }
    if (req.method === 'POST' && req.url.startsWith('/max-age/')) {
      maxAge = Number(req.url.slice('/max-age/'.length));
      return reply(200, { maxAge });
    }
    if (req.method === 'POST' && req.url === '/backchannel-logout') {
      const { code, body } = await backchannelLogout(JSON.parse((await readBody(req)) || '{}'));
      return reply(code, body);
    }
    if (req.method === 'POST' && req.url === '/mint') {
      const { sub, aud, scope, sid, ttl } = JSON.parse((await readBody(req)) || '{}');
      const { SignJWT, importJWK } = await import('jose');
      const k = keys[0];
      const now = Math.floor(Date.now() / 1000);
      const claims = { scope: scope ?? '', client_id: 'orders-client' };
      if (sid) claims.sid = sid;
      const token = await new SignJWT(claims)
        .setProtectedHeader({ alg: 'RS256', typ: 'at+jwt', kid: k.kid })
        .setIssuer(issuer)
        .setSubject(sub)
        .setAudience(aud ?? API)
        .setIssuedAt(now)
        .setExpirationTime(now + (ttl ?? 300))
        .setJti(randomUUID())
        .sign(await importJWK(k, 'RS256'));
      return reply(200, { token });
    }
    if (req.method === 'GET' && req.url === '/stats') {
      return reply(200, { ...stats, kids: keys.map((k) => k.kid) });
    }
    return reply(404, { error: 'not found' });
  } catch (e) {
    return reply(500, { error: String(e) });
  }
});

await listen();
if (mtlsPort) {
  // The mTLS listener (RFC 8705): asks every client for a certificate and takes any (the
  // provider judges it: a thumbprint registered for the client, see getCertificate).
  const mtls = https.createServer({
    cert: readFileSync(process.env.MTLS_CERT),
    key: readFileSync(process.env.MTLS_KEY),
    requestCert: true,
    rejectUnauthorized: false,
  }, onRequest);
  await new Promise((resolve) => mtls.listen(mtlsPort, '127.0.0.1', resolve));
}
await new Promise((resolve) => admin.listen(adminPort, '127.0.0.1', resolve));
console.log(`READY ${port} ${adminPort}`);
