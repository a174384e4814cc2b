// A real DPoP (RFC 9449) client against Portcullis: oauth4webapi discovers the authorization
// server, gets a DPoP-bound access token (client_credentials, ES256 proof key) and calls the API
// through the gateway with protectedResourceRequest; then hand-made requests (proofs built with
// jose, sent with node:http) try to use the token without a valid proof of its key.
//
//   ISSUER=http://127.0.0.1:P RESOURCE=https://api.portcullis.test \
//   API_URL=http://127.0.0.1:G/orders/echo node client.mjs
//
// Env: ISSUER, RESOURCE (the token's audience), API_URL (through the gateway; each request adds
//      ?case=<name>, which DPoP's htu ignores, so the upstream's log says which cases got through),
//      CLIENT_ID / CLIENT_SECRET (default dpop-client / dpop-client-secret: dpop_bound_access_tokens),
//      BEARER_CLIENT_ID / BEARER_CLIENT_SECRET (default orders-client: its unbound token, case m/n),
//      SCOPE (default orders:read).
//
// Prints one JSON line: {"token": {...}, "cases": {"<name>": {"status", "challenge", ...}}} and
// exits 0 when every request could be made (whatever the gateway answered: checks.mjs judges);
// non-zero, with {"error"} on stdout, when the setup (discovery, tokens) failed.
//
// Cases (the attack ones each send exactly one request):
//   good           oauth4webapi protectedResourceRequest GET with its DPoP handle
//   good_post      the same, POST with a body (htm POST)
//   control        a valid proof made here with jose (proves the attack scaffolding is right)
//   a_bearer       the bound token as `Bearer`, no proof
//   a2_bearer_with_proof  the bound token as `Bearer` with a valid proof
//   b_other_key    a proof by another ES256 key (its own jwk): not the token's cnf.jkt
//   b2_forged_jwk  the token's public jwk in the header, signed by another key
//   c_replay       the exact proof oauth4webapi sent for `good`, again
//   c2_first / c2_replay  a fresh jose proof (200), then the same proof again
//   d_htu_path     htu names another path;  d2_htu_port  htu names another port
//   e_htm          htm POST on a GET
//   f1_no_ath / f2_wrong_ath  no ath; ath of another token
//   g_iat_old      iat 10 minutes ago;  g2_iat_future  iat 10 minutes ahead
//   h_typ_jwt      typ JWT
//   i1_hs256       alg HS256 with the token's public jwk, HMAC keyed with that jwk (alg confusion)
//   i2_none        alg none, the token's public jwk, empty signature
//   i3_alg_not_allowed  a valid EdDSA proof for a token bound to an Ed25519 key (the provider
//                  accepts Ed25519 proofs; the gateway's dpop.algorithms is only ES256)
//   j_private_d    a valid proof whose jwk also carries the private `d`
//   k_no_proof     `Authorization: DPoP` without a DPoP header
//   l_two_proofs   two DPoP header fields, each a valid proof
//   m_unbound_bearer  an unbound token (no cnf) as Bearer (refused when dpop.mode is required)
//   n_unbound_dpop    that unbound token as DPoP with a valid proof (it is bound to no key)
//   good_after     oauth4webapi again at the end: the gateway still accepts a valid request
import http from 'node:http';
import https from 'node:https';
import { createHash, createHmac, randomBytes } from 'node:crypto';
import * as oauth from 'oauth4webapi';
import {
  SignJWT, calculateJwkThumbprint, decodeJwt, exportJWK, generateKeyPair,
} from 'jose';

const env = (name, fallback) => {
  const v = process.env[name] ?? fallback;
  if (v === undefined || v === '') throw new Error(`${name} is required`);
  return v;
};

const b64u = (buf) => Buffer.from(buf).toString('base64url');
const sha256 = (s) => createHash('sha256').update(s).digest('base64url');
const now = () => Math.floor(Date.now() / 1000);
const jti = () => randomBytes(18).toString('base64url');

// --- the protocol client (oauth4webapi) ---------------------------------------------------------

const insecure = { [oauth.allowInsecureRequests]: true }; // the provider and gateway are plain http

async function discover(issuer) {
  const url = new URL(issuer);
  return oauth.processDiscoveryResponse(url, await oauth.discoveryRequest(url, insecure));
}

async function clientCredentials(as, clientId, secret, params, DPoP) {
  const client = { client_id: clientId };
  const auth = oauth.ClientSecretBasic(secret);
  const opts = { ...insecure, ...(DPoP ? { DPoP } : {}) };
  const request = () => oauth.clientCredentialsGrantRequest(as, client, auth, params, opts);
  let response = await request();
  try {
    return await oauth.processClientCredentialsResponse(as, client, response);
  } catch (e) {
    // The provider does not ask for DPoP nonces, but a client must retry once when it does.
    if (!DPoP || !oauth.isDPoPNonceError(e)) throw e;
    response = await request();
    return oauth.processClientCredentialsResponse(as, client, response);
  }
}

// The exact DPoP header oauth4webapi sent, per case (customFetch sees the request).
const sentProofs = {};
function capturingFetch(name) {
  return (url, init) => {
    sentProofs[name] = init.headers.dpop ?? init.headers.DPoP;
    return fetch(url, init);
  };
}

async function viaLibrary(name, token, DPoP, method = 'GET', body = null) {
  const headers = new Headers();
  if (body !== null) headers.set('content-type', 'application/json');
  let response;
  try {
    response = await oauth.protectedResourceRequest(token, method, caseUrl(name), headers, body, {
      ...insecure,
      DPoP,
      [oauth.customFetch]: capturingFetch(name),
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
    nonce: response.headers.get('dpop-nonce'),
    body: text.slice(0, 300),
    via: 'oauth4webapi',
  };
}

// --- hand-made requests ---------------------------------------------------------------------------

let apiUrl;
// NONCE_URL: a route whose issuer asks for server nonces (RFC 9449 section 9); the
// nonce_* cases go there.
let nonceUrl = null;
function caseUrl(name) {
  const u = new URL(name.startsWith('nonce_') && nonceUrl ? nonceUrl : apiUrl);
  u.searchParams.set('case', name);
  return u;
}
const htuOf = (u) => `${u.origin}${u.pathname}`;

// headers: values may be arrays (node:http then sends one field line per value).
function send(name, method, headers, body) {
  const u = caseUrl(name);
  const lib = u.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    const req = lib.request(u, { method, headers, timeout: 10_000 }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({
        status: res.statusCode,
        challenge: res.headers['www-authenticate'] ?? null,
        nonce: res.headers['dpop-nonce'] ?? null,
        body: Buffer.concat(chunks).toString().slice(0, 300),
      }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    if (body) req.write(body);
    req.end();
  });
}

// A compact JWS from a header and payload with the given signature function.
function compact(header, payload, signer) {
  const input = `${b64u(JSON.stringify(header))}.${b64u(JSON.stringify(payload))}`;
  return `${input}.${signer ? b64u(signer(input)) : ''}`;
}

async function main() {
  const issuer = env('ISSUER');
  const resource = env('RESOURCE');
  apiUrl = env('API_URL');
  nonceUrl = process.env.NONCE_URL || null;
  const scope = env('SCOPE', 'orders:read');
  const params = { resource, scope };

  const as = await discover(issuer);

  // The proof key. Extractable so case j can put its private part in a header; oauth4webapi
  // only needs the public key to be.
  const keyPair = await oauth.generateKeyPair('ES256', { extractable: true });
  const DPoP = oauth.DPoP({}, keyPair);
  const thumbprint = await DPoP.calculateThumbprint();

  const bound = await clientCredentials(
    as, env('CLIENT_ID', 'dpop-client'), env('CLIENT_SECRET', 'dpop-client-secret'), params, DPoP,
  );
  const token = bound.access_token;
  const claims = decodeJwt(token);
  const tokenInfo = {
    token_type: bound.token_type,
    cnf_jkt: claims.cnf?.jkt ?? null,
    thumbprint,
    aud: claims.aud,
    client_id: claims.client_id,
  };
  if (bound.token_type !== 'dpop' || tokenInfo.cnf_jkt !== thumbprint) {
    throw new Error(`the token is not DPoP-bound to the proof key: ${JSON.stringify(tokenInfo)}`);
  }

  const unbound = await clientCredentials(
    as,
    env('BEARER_CLIENT_ID', 'orders-client'),
    env('BEARER_CLIENT_SECRET', 'orders-client-secret'),
    params,
  );
  const unboundClaims = decodeJwt(unbound.access_token);
  tokenInfo.unbound = { token_type: unbound.token_type, cnf: unboundClaims.cnf ?? null };
  if (unbound.token_type !== 'bearer' || unboundClaims.cnf) {
    throw new Error(`the orders-client token should be a plain bearer token: ${JSON.stringify(tokenInfo.unbound)}`);
  }

  const boundJwk = await exportJWK(keyPair.publicKey); // kty, crv, x, y
  const privateJwk = await exportJWK(keyPair.privateKey); // ... and d
  const other = await generateKeyPair('ES256', { extractable: true });
  const otherJwk = await exportJWK(other.publicKey);

  // A proof for case `name` (htu/htm of the request it goes with unless overridden).
  async function proof(name, o = {}) {
    const u = caseUrl(name);
    const header = { alg: 'ES256', typ: 'dpop+jwt', jwk: boundJwk, ...o.header };
    const payload = {
      jti: jti(),
      htm: o.method ?? 'GET',
      htu: htuOf(u),
      iat: now(),
      ath: sha256(o.token ?? token),
      ...o.claims,
    };
    for (const k of o.omit ?? []) delete payload[k];
    return new SignJWT(payload).setProtectedHeader(header).sign(o.key ?? keyPair.privateKey);
  }
  const dpopHeaders = (p, t = token) => ({ authorization: `DPoP ${t}`, ...(p ? { dpop: p } : {}) });

  const cases = {};
  const run = async (name, fn) => {
    try {
      cases[name] = await fn(name);
    } catch (e) {
      cases[name] = { status: null, challenge: null, error: String(e?.stack ?? e) };
    }
  };

  // RFC 9449 section 9: a resource server asking for nonces. A fresh oauth4webapi handle
  // has none: its first call is refused with use_dpop_nonce and a DPoP-Nonce, which the
  // handle keeps; the next calls carry it.
  if (nonceUrl) {
    const handle = oauth.DPoP({}, keyPair);
    await run('nonce_first', (n) => viaLibrary(n, token, handle));
    await run('nonce_retry', (n) => viaLibrary(n, token, handle));
    await run('nonce_again', (n) => viaLibrary(n, token, handle));
    await run('nonce_missing', async (n) => send(n, 'GET', dpopHeaders(await proof(n))));
    await run('nonce_forged', async (n) => send(n, 'GET', dpopHeaders(
      await proof(n, { claims: { nonce: Buffer.alloc(24).toString('base64url') } }),
    )));
    await run('nonce_by_hand', async (n) => send(n, 'GET', dpopHeaders(
      await proof(n, { claims: { nonce: cases.nonce_first?.nonce ?? 'none' } }),
    )));
  }

  // What a legitimate client does.
  await run('good', (n) => viaLibrary(n, token, DPoP));
  await run('good_post', (n) => viaLibrary(n, token, DPoP, 'POST', JSON.stringify({ hello: 'dpop' })));
  await run('control', async (n) => send(n, 'GET', dpopHeaders(await proof(n))));

  // (a) the bound token as a bearer token.
  await run('a_bearer', (n) => send(n, 'GET', { authorization: `Bearer ${token}` }));
  await run('a2_bearer_with_proof', async (n) => send(n, 'GET', {
    authorization: `Bearer ${token}`, dpop: await proof(n),
  }));
  // (b) a proof by another key.
  await run('b_other_key', async (n) => send(n, 'GET', dpopHeaders(
    await proof(n, { header: { jwk: otherJwk }, key: other.privateKey }),
  )));
  await run('b2_forged_jwk', async (n) => send(n, 'GET', dpopHeaders(
    await proof(n, { key: other.privateKey }),
  )));
  // (c) replays: oauth4webapi's proof for `good`; a fresh proof used twice.
  await run('c_replay', (n) => {
    if (!sentProofs.good) throw new Error('no proof captured for good');
    // Same proof, so the same htu: the path of `good` (its ?case= is ignored by htu).
    return send(n, 'GET', dpopHeaders(sentProofs.good));
  });
  {
    const p = await proof('c2_first');
    await run('c2_first', (n) => send(n, 'GET', dpopHeaders(p)));
    await run('c2_replay', (n) => send(n, 'GET', dpopHeaders(p)));
  }
  // (d) htu for another path / port.
  await run('d_htu_path', async (n) => {
    const u = caseUrl(n);
    return send(n, 'GET', dpopHeaders(await proof(n, { claims: { htu: `${u.origin}/not${u.pathname}` } })));
  });
  await run('d2_htu_port', async (n) => {
    const u = caseUrl(n);
    const port = Number(u.port || (u.protocol === 'https:' ? 443 : 80));
    const htu = `${u.protocol}//${u.hostname}:${port === 65535 ? port - 1 : port + 1}${u.pathname}`;
    return send(n, 'GET', dpopHeaders(await proof(n, { claims: { htu } })));
  });
  // (e) htm POST for a GET.
  await run('e_htm', async (n) => send(n, 'GET', dpopHeaders(await proof(n, { method: 'POST' }))));
  // (f) ath missing / for another token.
  await run('f1_no_ath', async (n) => send(n, 'GET', dpopHeaders(await proof(n, { omit: ['ath'] }))));
  await run('f2_wrong_ath', async (n) => send(n, 'GET', dpopHeaders(
    await proof(n, { claims: { ath: sha256(unbound.access_token) } }),
  )));
  // (g) iat 10 minutes old / ahead.
  await run('g_iat_old', async (n) => send(n, 'GET', dpopHeaders(await proof(n, { claims: { iat: now() - 600 } }))));
  await run('g2_iat_future', async (n) => send(n, 'GET', dpopHeaders(await proof(n, { claims: { iat: now() + 600 } }))));
  // (h) typ JWT.
  await run('h_typ_jwt', async (n) => send(n, 'GET', dpopHeaders(await proof(n, { header: { typ: 'JWT' } }))));
  // (i) symmetric / no signature, with the token's own public jwk (an attacker knows it).
  const rawClaims = (n) => {
    const u = caseUrl(n);
    return { jti: jti(), htm: 'GET', htu: htuOf(u), iat: now(), ath: sha256(token) };
  };
  await run('i1_hs256', (n) => send(n, 'GET', dpopHeaders(compact(
    { alg: 'HS256', typ: 'dpop+jwt', jwk: boundJwk },
    rawClaims(n),
    (input) => createHmac('sha256', JSON.stringify(boundJwk)).update(input).digest(),
  ))));
  await run('i2_none', (n) => send(n, 'GET', dpopHeaders(compact(
    { alg: 'none', typ: 'dpop+jwt', jwk: boundJwk },
    rawClaims(n),
    null,
  ))));
  // An algorithm the gateway's issuer does not allow (its dpop.algorithms: ES256), for a token
  // really bound to that key (the provider accepts Ed25519 proofs).
  await run('i3_alg_not_allowed', async (n) => {
    const ed = await generateKeyPair('EdDSA', { extractable: true });
    const edToken = (await clientCredentials(
      as, env('CLIENT_ID', 'dpop-client'), env('CLIENT_SECRET', 'dpop-client-secret'), params,
      oauth.DPoP({}, ed),
    )).access_token;
    const edJkt = decodeJwt(edToken).cnf?.jkt;
    const edJwk = await exportJWK(ed.publicKey);
    const p = await proof(n, {
      header: { alg: 'EdDSA', jwk: edJwk }, key: ed.privateKey, token: edToken,
    });
    return { ...(await send(n, 'GET', dpopHeaders(p, edToken))), bound_to_proof_key: edJkt === await calculateJwkThumbprint(edJwk) };
  });
  // (j) a jwk with its private part, otherwise a valid proof by the bound key.
  await run('j_private_d', async (n) => send(n, 'GET', dpopHeaders(await proof(n, { header: { jwk: privateJwk } }))));
  // (k) the DPoP scheme without a proof; (l) two proofs.
  await run('k_no_proof', (n) => send(n, 'GET', dpopHeaders(null)));
  await run('l_two_proofs', async (n) => send(n, 'GET', {
    authorization: `DPoP ${token}`,
    dpop: [await proof(n), await proof(n)],
  }));
  // (m, n) a token bound to no key.
  await run('m_unbound_bearer', (n) => send(n, 'GET', { authorization: `Bearer ${unbound.access_token}` }));
  await run('n_unbound_dpop', async (n) => send(n, 'GET', dpopHeaders(
    await proof(n, { token: unbound.access_token }), unbound.access_token,
  )));

  await run('good_after', (n) => viaLibrary(n, token, DPoP));

  process.stdout.write(`${JSON.stringify({ token: tokenInfo, cases })}\n`);
}

main().catch((e) => {
  process.stdout.write(`${JSON.stringify({ error: String(e?.stack ?? e) })}\n`);
  process.exit(1);
});
