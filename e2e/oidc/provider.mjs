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
import http from 'node:http';
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import Provider from 'oidc-provider';

const port = Number(process.env.PORT);
const adminPort = Number(process.env.ADMIN_PORT);
const issuer = `http://127.0.0.1:${port}`;

// Resources (audiences): JWT access tokens, short-lived JWTs, and opaque tokens.
export const API = 'https://api.portcullis.test';
export const SHORT = 'https://short.portcullis.test';
export const OPAQUE = 'https://opaque.portcullis.test';
const SCOPES = ['orders:read', 'orders:write', 'admin'];

function newKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), alg: 'RS256', use: 'sig' };
}

let keys = [newKey()];
let maxAge = 3600;
// Back-channel logout: off until the first POST /backchannel-logout (or BACKCHANNEL_LOGOUT=1).
let backchannel = process.env.BACKCHANNEL_LOGOUT === '1';
let lastLogout; // { status, logoutToken } of the provider's last outgoing logout request
const stats = { jwks: 0, discovery: 0, introspection: 0, token: 0 };

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
        // The gateway's own client: it only introspects.
        client_id: 'portcullis-gateway',
        client_secret: 'portcullis-gateway-secret',
        grant_types: [],
        redirect_uris: [],
        response_types: [],
      },
    ],
    jwks: { keys },
    scopes: SCOPES,
    // oidc-provider refuses outgoing requests to special-use addresses (loopback included);
    // the back-channel logout receiver under test listens on 127.0.0.1.
    ...(backchannel ? { fetch: backchannelFetch } : {}),
    ttl: { ClientCredentials: (ctx, token) => token.resourceServer?.accessTokenTTL ?? 300 },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      // Only the gateway's client may introspect.
      introspection: {
        enabled: true,
        allowedPolicy: (ctx, client) => client.clientId === 'portcullis-gateway',
      },
      revocation: { enabled: true },
      backchannelLogout: { enabled: backchannel },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => API,
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, resource) => {
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

const server = http.createServer((req, res) => {
  const path = req.url.split('?')[0];
  if (path === '/jwks') {
    stats.jwks += 1;
    res.setHeader('Cache-Control', `public, max-age=${maxAge}`);
  }
  if (path === '/.well-known/openid-configuration') stats.discovery += 1;
  if (path === '/token/introspection') stats.introspection += 1;
  if (path === '/token') stats.token += 1;
  handler(req, res);
});
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
    if (req.method === 'GET' && req.url === '/stats') {
      return reply(200, { ...stats, kids: keys.map((k) => k.kid) });
    }
    return reply(404, { error: 'not found' });
  } catch (e) {
    return reply(500, { error: String(e) });
  }
});

await listen();
await new Promise((resolve) => admin.listen(adminPort, '127.0.0.1', resolve));
console.log(`READY ${port} ${adminPort}`);
