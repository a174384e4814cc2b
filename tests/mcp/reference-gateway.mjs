// A *reference* MCP resource server in front of server.mjs: ~what Portcullis has to do for an MCP
// route, in 150 lines, so the harness (client.mjs, conformance.sh) can be checked before the
// gateway has MCP support, and so the gateway's answers can be compared with it. Not a product.
//
//   PORT=0 UPSTREAM=http://127.0.0.1:<server.mjs port> ISSUER=http://127.0.0.1:<oidc port> \
//     node reference-gateway.mjs            prints `READY <port>`
//
// Optional: RESOURCE (default http://127.0.0.1:<port>/mcp), ALLOWED_ORIGINS (space separated),
// BASE_SCOPE (default mcp:tools), ADMIN_SCOPE (default mcp:admin), ADMIN_TOOLS (default delete_everything).
//
// Behaviour (MCP authorization spec 2025-11-25 / 2026-07-28, RFC 9728, RFC 6750, RFC 8707):
//   GET  /.well-known/oauth-protected-resource/mcp (and the root form)  RFC 9728 metadata
//   POST /mcp  Origin present and not allowed          -> 403, JSON-RPC error without id
//              no / bad / expired / wrong-aud token    -> 401 WWW-Authenticate: Bearer resource_metadata=..., scope=...
//              Mcp-Method / Mcp-Name disagree with body -> 400, JSON-RPC error -32020 (HeaderMismatch)
//              tools/call of an ADMIN_TOOLS tool without ADMIN_SCOPE
//                                                       -> 403 WWW-Authenticate: Bearer error="insufficient_scope", scope=..., resource_metadata=...
//              otherwise forwarded to UPSTREAM *without* the Authorization header.
import http from 'node:http';
import { createRemoteJWKSet, jwtVerify } from 'jose';

const port = Number(process.env.PORT ?? 0);
const upstream = new URL(process.env.UPSTREAM);
const issuer = process.env.ISSUER;
const baseScope = process.env.BASE_SCOPE ?? 'mcp:tools';
const adminScope = process.env.ADMIN_SCOPE ?? 'mcp:admin';
const adminTools = (process.env.ADMIN_TOOLS ?? 'delete_everything').split(/\s+/).filter(Boolean);
const allowedOrigins = (process.env.ALLOWED_ORIGINS ?? '').split(/\s+/).filter(Boolean);

let resource; // set once listening (the port may be 0)
let prmUrl;
let jwks;

async function loadJwks() {
  if (!jwks) {
    const res = await fetch(`${issuer}/.well-known/openid-configuration`);
    const meta = await res.json();
    jwks = createRemoteJWKSet(new URL(meta.jwks_uri));
  }
  return jwks;
}

const quote = (v) => `"${String(v).replace(/["\\]/g, '\\$&')}"`;
const send = (res, code, headers, body) => {
  res.writeHead(code, { 'content-type': 'application/json', ...headers });
  res.end(body === undefined ? '' : JSON.stringify(body));
};
const rpcError = (id, code, message) => ({ jsonrpc: '2.0', ...(id === undefined ? {} : { id }), error: { code, message } });

function challenge401(res, error) {
  const params = [`resource_metadata=${quote(prmUrl)}`, `scope=${quote(baseScope)}`];
  if (error) console.error(`[reference-gateway] 401 invalid_token: ${error}`);
  if (error) params.push(`error=${quote('invalid_token')}`, `error_description=${quote(error)}`);
  send(res, 401, { 'www-authenticate': `Bearer ${params.join(', ')}` }, { error: 'invalid_token', error_description: error ?? 'authorization required' });
}

async function readBody(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  return Buffer.concat(chunks);
}

async function handleMcp(req, res) {
  const origin = req.headers.origin;
  if (origin !== undefined && !allowedOrigins.includes(origin)) {
    return send(res, 403, {}, rpcError(undefined, -32000, `Forbidden: origin ${origin} not allowed`));
  }
  const authz = req.headers.authorization ?? '';
  const m = /^Bearer ([A-Za-z0-9._~+/-]+=*)$/i.exec(authz);
  if (!m) return challenge401(res);
  let claims;
  try {
    ({ payload: claims } = await jwtVerify(m[1], await loadJwks(), { issuer, audience: resource }));
  } catch (e) {
    return challenge401(res, e.code ?? e.message);
  }
  const scopes = new Set(String(claims.scope ?? '').split(' ').filter(Boolean));
  if (!scopes.has(baseScope)) {
    return send(res, 403, {
      'www-authenticate': `Bearer error="insufficient_scope", scope=${quote(baseScope)}, resource_metadata=${quote(prmUrl)}`,
    }, { error: 'insufficient_scope' });
  }

  const body = req.method === 'POST' ? await readBody(req) : Buffer.alloc(0);
  let msg;
  if (req.method === 'POST') {
    try { msg = JSON.parse(body.toString('utf8')); } catch { return send(res, 400, {}, rpcError(null, -32700, 'Parse error')); }
    // The gateway decides on the body; headers that claim something else are refused (SEP-2243).
    const hMethod = req.headers['mcp-method'];
    const bName = msg?.method === 'resources/read' ? msg?.params?.uri : msg?.params?.name;
    const hName = req.headers['mcp-name'];
    if (hMethod !== undefined && hMethod !== msg?.method) {
      return send(res, 400, {}, rpcError(msg?.id, -32020, `Header mismatch: Mcp-Method ${hMethod} vs body ${msg?.method}`));
    }
    if (hName !== undefined && !hName.startsWith('=?base64?') && hName.trim() !== bName) {
      return send(res, 400, {}, rpcError(msg?.id, -32020, `Header mismatch: Mcp-Name ${hName} vs body ${bName}`));
    }
    if (msg?.method === 'tools/call' && adminTools.includes(msg?.params?.name) && !scopes.has(adminScope)) {
      return send(res, 403, {
        'www-authenticate': `Bearer error="insufficient_scope", scope=${quote(`${baseScope} ${adminScope}`)}, `
          + `resource_metadata=${quote(prmUrl)}, error_description=${quote(`${msg.params.name} needs ${adminScope}`)}`,
      }, { error: 'insufficient_scope' });
    }
  }

  // Forward without the client's token (no token passthrough) and without hop-by-hop headers.
  const headers = { ...req.headers };
  for (const h of ['authorization', 'host', 'connection', 'keep-alive', 'transfer-encoding', 'content-length']) delete headers[h];
  if (body.length) headers['content-length'] = String(body.length);
  headers['x-forwarded-sub'] = String(claims.sub);
  const up = http.request({ hostname: upstream.hostname, port: upstream.port, path: req.url, method: req.method, headers }, (ur) => {
    res.writeHead(ur.statusCode, ur.headers);
    ur.pipe(res);
  });
  up.on('error', (e) => send(res, 502, {}, rpcError(msg?.id, -32603, `upstream: ${e.message}`)));
  up.end(body);
}

const server = http.createServer((req, res) => {
  const path = req.url.split('?')[0];
  if (req.method === 'GET' && (path === '/.well-known/oauth-protected-resource/mcp' || path === '/.well-known/oauth-protected-resource')) {
    return send(res, 200, { 'cache-control': 'max-age=300' }, {
      resource,
      authorization_servers: [issuer],
      scopes_supported: [baseScope],
      bearer_methods_supported: ['header'],
      resource_name: 'Portcullis reference MCP gateway',
    });
  }
  if (path === '/mcp') {
    handleMcp(req, res).catch((e) => { if (!res.headersSent) send(res, 500, {}, rpcError(null, -32603, String(e))); });
    return;
  }
  send(res, 404, {}, { error: 'not found' });
});

server.listen(port, '127.0.0.1', () => {
  const p = server.address().port;
  resource = process.env.RESOURCE ?? `http://127.0.0.1:${p}/mcp`;
  prmUrl = `http://127.0.0.1:${p}/.well-known/oauth-protected-resource/mcp`;
  console.log(`READY ${p}`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
process.on('SIGINT', () => server.close(() => process.exit(0)));
