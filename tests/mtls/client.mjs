// A real client of certificate-bound access tokens (RFC 8705) against Portcullis: oauth4webapi
// discovers the authorization server (e2e/oidc/provider.mjs), authenticates as `mtls-client`
// with its client certificate (self_signed_tls_client_auth, section 2.2) at the mTLS token
// endpoint alias (section 5), gets a token bound to that certificate (cnf.x5t#S256, section
// 3.1), and calls the API through the gateway over TLS with protectedResourceRequest; then the
// same token from connections with another certificate, or none. Then the same for
// `mtls-self-client`, whose certificate C is self-signed (the gateway runs with
// --tls-client-any-certificate, so it takes C at the handshake and judges the binding alone).
//
//   ISSUER=http://127.0.0.1:P RESOURCE=https://api.portcullis.test \
//   API_URL=https://127.0.0.1:G CA=ca.pem CERT_A=a.pem KEY_A=a.key CERT_B=b.pem KEY_B=b.key \
//   CERT_C=c.pem KEY_C=c.key node client.mjs
//
// Env: ISSUER; RESOURCE (JWT audience) and OPAQUE_RESOURCE (opaque tokens, introspected);
//      API_URL (the gateway's TLS origin; paths /required, /optional and /opaque are routes
//      whose TokenPolicy has certificateBound Required, Optional, and Required with
//      introspection; each request adds ?case=<name>, so the upstream's log says which cases
//      got through); CA (trusted for the gateway and the provider's mTLS port);
//      CERT_A/KEY_A (the certificate registered for mtls-client), CERT_B/KEY_B (another
//      certificate from the same CA, which the gateway also trusts), CERT_C/KEY_C (self-signed,
//      from no CA the gateway trusts; registered for mtls-self-client); CLIENT_ID (default
//      mtls-client); SELF_CLIENT_ID (default mtls-self-client); BEARER_CLIENT_ID /
//      BEARER_CLIENT_SECRET (default orders-client: an unbound token); SCOPE (orders:read).
//
// Prints one JSON line: {"token": {...}, "as": {...}, "cases": {"<name>": {"status",
// "challenge", ...}}}, exit 0 when the setup worked (checks.mjs judges the answers); non-zero
// with {"error"} when discovery or the bound token failed.
//
// Authorization server cases (as.*): mtls-client with certificate B, with no certificate at
// the mTLS port, and at the plain-HTTP token endpoint, and mtls-self-client with certificate
// A: each must be refused (invalid_client).
// Gateway cases (each one request unless said):
//   good            cert A, bound JWT, /required (oauth4webapi + undici, HTTP/1.1)
//   good_post       the same, POST with a body
//   good_h2         the same over HTTP/2 (node:http2, ALPN h2)
//   resumed_1/_2    node:https, cert A, two connections in a row: the second resumes the TLS
//                   session (its certificate comes from the session, not a new handshake)
//   cert_b          the bound token from a connection with certificate B
//   no_cert         the bound token from a TLS connection without a certificate
//   untrusted_cert  the bound token with certificate C (self-signed: through the handshake
//                   with --tls-client-any-certificate, but not the token's certificate)
//   plain_http      the bound token in cleartext (node:http) to the gateway's TLS port
//   unbound_no_cert / unbound_cert_a   an unbound token (orders-client) on /required
//   opt_unbound     the unbound token on /optional (a bearer token there)
//   opt_bound_a / opt_bound_no_cert / opt_bound_b   the bound token on /optional
//   opaque_a / opaque_b / opaque_no_cert  a bound opaque token (introspected; its cnf comes in
//                   the introspection answer, section 3.2) on /opaque
//   opaque_unbound  an unbound opaque token (orders-client) on /opaque, cert A
//   self_good       cert C, mtls-self-client's bound JWT, /required
//   self_cert_a / self_no_cert  that token with certificate A, or with none
//   good_after      cert A again at the end
import http from 'node:http';
import http2 from 'node:http2';
import https from 'node:https';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import * as oauth from 'oauth4webapi';
import { decodeJwt } from 'jose';
import { Agent, fetch as undiciFetch } from 'undici';

const env = (name, fallback) => {
  const v = process.env[name] ?? fallback;
  if (v === undefined || v === '') throw new Error(`${name} is required`);
  return v;
};
const read = (name) => readFileSync(env(name));

// The x5t#S256 of a PEM certificate: base64url SHA-256 of its DER (RFC 8705 section 3.1).
function thumbprint(pem) {
  const b64 = pem.toString().replace(/-----(BEGIN|END) CERTIFICATE-----|\s/g, '');
  return createHash('sha256').update(Buffer.from(b64, 'base64')).digest('base64url');
}

// The provider's issuer and discovery are plain http (loopback); its mTLS port and the
// gateway are https.
const insecure = { [oauth.allowInsecureRequests]: true };

// One undici Agent per identity (its own connection pool, so a certificate never rides on
// another identity's connection). cert: [certPem, keyPem] or null.
function agent(ca, cert, extra = {}) {
  return new Agent({
    connect: { ca, ...(cert ? { cert: cert[0], key: cert[1] } : {}) },
    ...extra,
  });
}
const via = (dispatcher) => (url, init) => undiciFetch(url, { ...init, dispatcher });

let apiUrl;
function caseUrl(path, name) {
  const u = new URL(path, apiUrl);
  u.searchParams.set('case', name);
  return u;
}

async function viaLibrary(dispatcher, path, name, token, method = 'GET', body = null) {
  const headers = new Headers();
  if (body !== null) headers.set('content-type', 'application/json');
  let response;
  try {
    response = await oauth.protectedResourceRequest(token, method, caseUrl(path, name), headers, body, {
      [oauth.customFetch]: via(dispatcher),
    });
  } catch (e) {
    // A 401 with a challenge is thrown (WWWAuthenticateChallengeError): record it all the same.
    if (!(e instanceof oauth.WWWAuthenticateChallengeError)) throw e;
    response = e.response;
  }
  const text = await response.text();
  return {
    status: response.status,
    challenge: response.headers.get('www-authenticate'),
    body: text.slice(0, 300),
    via: 'oauth4webapi',
  };
}

// node:https with a session-caching Agent, no keep-alive: each request is a new connection,
// and the second resumes the first one's TLS session.
function viaNodeHttps(httpsAgent, path, name, token) {
  return new Promise((resolve, reject) => {
    let reused = null;
    let protocol = null;
    const req = https.request(caseUrl(path, name), {
      method: 'GET',
      agent: httpsAgent,
      headers: { authorization: `Bearer ${token}`, connection: 'close' },
      timeout: 10_000,
    }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({
        status: res.statusCode,
        challenge: res.headers['www-authenticate'] ?? null,
        body: Buffer.concat(chunks).toString().slice(0, 300),
        tls_session_reused: reused,
        tls_protocol: protocol,
        via: 'node:https',
      }));
    });
    req.on('socket', (s) => s.on('secureConnect', () => {
      reused = s.isSessionReused();
      protocol = s.getProtocol();
    }));
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end();
  });
}

// node:http2 (ALPN h2 only, so the answer says the gateway spoke HTTP/2 on that connection).
function viaHttp2(ca, cert, path, name, token) {
  const u = caseUrl(path, name);
  return new Promise((resolve, reject) => {
    const session = http2.connect(u.origin, { ca, cert: cert[0], key: cert[1] });
    session.on('error', reject);
    const req = session.request({
      ':method': 'GET', ':path': `${u.pathname}${u.search}`, authorization: `Bearer ${token}`,
    });
    let head;
    const chunks = [];
    req.on('response', (h) => { head = h; });
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const alpn = session.alpnProtocol;
      session.close();
      resolve({
        status: head?.[':status'] ?? null,
        challenge: head?.['www-authenticate'] ?? null,
        body: Buffer.concat(chunks).toString().slice(0, 300),
        alpn,
        via: 'node:http2',
      });
    });
    req.on('error', (e) => { session.destroy(); reject(e); });
    req.setTimeout(10_000, () => req.close(http2.constants.NGHTTP2_CANCEL));
    req.end();
  });
}

// The token in cleartext to the gateway's port (its only proxy listener, TLS): whatever comes
// back, if anything.
function viaPlainHttp(path, name, token) {
  const u = caseUrl(path, name);
  u.protocol = 'http:';
  return new Promise((resolve, reject) => {
    const req = http.request(u, {
      method: 'GET', headers: { authorization: `Bearer ${token}` }, timeout: 5_000,
    }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({
        status: res.statusCode,
        challenge: res.headers['www-authenticate'] ?? null,
        body: Buffer.concat(chunks).toString().slice(0, 300),
        via: 'node:http',
      }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end();
  });
}

// A token request whose refusal is the expected outcome: what the provider answered.
async function tokenAttempt(fn) {
  try {
    const r = await fn();
    return { issued: true, token_type: r.token_type };
  } catch (e) {
    return {
      issued: false,
      error: e?.error ?? e?.cause?.error ?? null,
      error_description: e?.error_description ?? e?.cause?.error_description ?? null,
      status: e?.status ?? e?.response?.status ?? null,
      message: String(e?.message ?? e).slice(0, 200),
    };
  }
}

async function main() {
  const issuer = new URL(env('ISSUER'));
  const resource = env('RESOURCE');
  const opaqueResource = env('OPAQUE_RESOURCE');
  apiUrl = env('API_URL');
  const scope = env('SCOPE', 'orders:read');
  const ca = read('CA');
  const certA = [read('CERT_A'), read('KEY_A')];
  const certB = [read('CERT_B'), read('KEY_B')];
  const certC = [read('CERT_C'), read('KEY_C')];
  const clientId = env('CLIENT_ID', 'mtls-client');
  const selfClientId = env('SELF_CLIENT_ID', 'mtls-self-client');

  const as = await oauth.processDiscoveryResponse(issuer, await oauth.discoveryRequest(issuer, insecure));
  const asInfo = {
    tls_client_certificate_bound_access_tokens: as.tls_client_certificate_bound_access_tokens ?? null,
    mtls_token_endpoint: as.mtls_endpoint_aliases?.token_endpoint ?? null,
    self_signed_tls_client_auth:
      (as.token_endpoint_auth_methods_supported ?? []).includes('self_signed_tls_client_auth'),
  };
  if (!asInfo.mtls_token_endpoint) {
    throw new Error(`the provider advertises no mtls_endpoint_aliases.token_endpoint: ${JSON.stringify(asInfo)}`);
  }

  const agents = {
    a: agent(ca, certA),
    b: agent(ca, certB),
    c: agent(ca, certC),
    none: agent(ca, null),
  };

  // section 2.2 + 5: the mTLS alias of the token endpoint, client authentication by the
  // certificate (oauth4webapi's TlsClientAuth sends only client_id).
  const mtlsClient = { client_id: clientId, use_mtls_endpoint_aliases: true };
  const boundToken = async (dispatcher, client = mtlsClient, res = resource) => {
    const response = await oauth.clientCredentialsGrantRequest(
      as, client, oauth.TlsClientAuth(), { resource: res, scope },
      { ...insecure, [oauth.customFetch]: via(dispatcher) },
    );
    return oauth.processClientCredentialsResponse(as, client, response);
  };

  const bound = await boundToken(agents.a);
  const token = bound.access_token;
  const claims = decodeJwt(token);
  const tokenInfo = {
    token_type: bound.token_type,
    cnf: claims.cnf ?? null,
    thumbprint_a: thumbprint(certA[0]),
    thumbprint_b: thumbprint(certB[0]),
    aud: claims.aud,
    client_id: claims.client_id,
    format: token.split('.').length === 3 ? 'jwt' : 'opaque',
  };

  const opaque = await boundToken(agents.a, mtlsClient, opaqueResource);
  tokenInfo.opaque = {
    token_type: opaque.token_type,
    format: opaque.access_token.split('.').length === 3 ? 'jwt' : 'opaque',
  };

  // mtls-self-client, self-signed certificate C (section 2.2).
  const selfClient = { client_id: selfClientId, use_mtls_endpoint_aliases: true };
  const selfBound = await boundToken(agents.c, selfClient);
  const selfToken = selfBound.access_token;
  const selfClaims = decodeJwt(selfToken);
  tokenInfo.self = {
    token_type: selfBound.token_type,
    cnf: selfClaims.cnf ?? null,
    thumbprint_c: thumbprint(certC[0]),
    aud: selfClaims.aud,
    client_id: selfClaims.client_id,
    format: selfToken.split('.').length === 3 ? 'jwt' : 'opaque',
  };

  // The authorization server refuses mtls-client without its certificate.
  const asCases = {
    cert_b: await tokenAttempt(() => boundToken(agents.b)),
    no_cert: await tokenAttempt(() => boundToken(agents.none)),
    plain_http: await tokenAttempt(() => boundToken(
      new Agent(), { client_id: clientId, use_mtls_endpoint_aliases: false },
    )),
    self_cert_a: await tokenAttempt(() => boundToken(agents.a, selfClient)),
  };

  // Unbound tokens (orders-client, client_secret_basic at the plain-HTTP endpoint).
  const bearerClient = { client_id: env('BEARER_CLIENT_ID', 'orders-client') };
  const bearerAuth = oauth.ClientSecretBasic(env('BEARER_CLIENT_SECRET', 'orders-client-secret'));
  const unboundGrant = async (res) => oauth.processClientCredentialsResponse(as, bearerClient,
    await oauth.clientCredentialsGrantRequest(as, bearerClient, bearerAuth, { resource: res, scope }, insecure));
  const unbound = await unboundGrant(resource);
  const unboundOpaque = await unboundGrant(opaqueResource);
  tokenInfo.unbound = {
    token_type: unbound.token_type,
    cnf: decodeJwt(unbound.access_token).cnf ?? null,
  };

  const cases = {};
  const run = async (name, fn) => {
    try {
      cases[name] = await fn(name);
    } catch (e) {
      const cause = e?.cause ? ` (cause: ${e.cause.code ?? ''} ${e.cause.message ?? e.cause})` : '';
      cases[name] = { status: null, challenge: null, error: `${String(e?.message ?? e)}${cause}` };
    }
  };

  // The legitimate client: its certificate, its token.
  await run('good', (n) => viaLibrary(agents.a, '/required', n, token));
  await run('good_post', (n) => viaLibrary(agents.a, '/required', n, token, 'POST', JSON.stringify({ hello: 'mtls' })));
  await run('good_h2', (n) => viaHttp2(ca, certA, '/required', n, token));
  {
    const resuming = new https.Agent({ ca, cert: certA[0], key: certA[1], keepAlive: false, maxCachedSessions: 10 });
    await run('resumed_1', (n) => viaNodeHttps(resuming, '/required', n, token));
    await run('resumed_2', (n) => viaNodeHttps(resuming, '/required', n, token));
  }

  // Someone else's connection with the token (section 3).
  await run('cert_b', (n) => viaLibrary(agents.b, '/required', n, token));
  await run('no_cert', (n) => viaLibrary(agents.none, '/required', n, token));
  await run('untrusted_cert', (n) => viaLibrary(agents.c, '/required', n, token));

  await run('plain_http', (n) => viaPlainHttp('/required', n, token));

  // certificateBound: Required takes no unbound token, with or without a certificate.
  await run('unbound_no_cert', (n) => viaLibrary(agents.none, '/required', n, unbound.access_token));
  await run('unbound_cert_a', (n) => viaLibrary(agents.a, '/required', n, unbound.access_token));

  // certificateBound: Optional: unbound tokens are bearer tokens, bound ones still need their
  // certificate.
  await run('opt_unbound', (n) => viaLibrary(agents.none, '/optional', n, unbound.access_token));
  await run('opt_bound_a', (n) => viaLibrary(agents.a, '/optional', n, token));
  await run('opt_bound_no_cert', (n) => viaLibrary(agents.none, '/optional', n, token));
  await run('opt_bound_b', (n) => viaLibrary(agents.b, '/optional', n, token));

  // Opaque, introspected: the binding comes in the introspection answer (section 3.2).
  await run('opaque_a', (n) => viaLibrary(agents.a, '/opaque', n, opaque.access_token));
  await run('opaque_b', (n) => viaLibrary(agents.b, '/opaque', n, opaque.access_token));
  await run('opaque_no_cert', (n) => viaLibrary(agents.none, '/opaque', n, opaque.access_token));
  await run('opaque_unbound', (n) => viaLibrary(agents.a, '/opaque', n, unboundOpaque.access_token));

  // A token bound to a self-signed certificate (section 2.2 client, section 3 binding): only
  // with that certificate.
  await run('self_good', (n) => viaLibrary(agents.c, '/required', n, selfToken));
  await run('self_cert_a', (n) => viaLibrary(agents.a, '/required', n, selfToken));
  await run('self_no_cert', (n) => viaLibrary(agents.none, '/required', n, selfToken));

  await run('good_after', (n) => viaLibrary(agents.a, '/required', n, token));

  await Promise.all(Object.values(agents).map((a) => a.close().catch(() => {})));
  process.stdout.write(`${JSON.stringify({ token: tokenInfo, as: { ...asInfo, refused: asCases }, cases })}\n`);
}

main().catch((e) => {
  // oauth4webapi's ResponseBodyError carries the OAuth error the server answered.
  const oauthError = e?.error ? ` (${e.status ?? ''} ${e.error}: ${e.error_description ?? ''})` : '';
  process.stdout.write(`${JSON.stringify({ error: `${String(e?.stack ?? e)}${oauthError}` })}\n`);
  process.exit(1);
});
