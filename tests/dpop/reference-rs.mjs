// A small reference DPoP (RFC 9449) resource server, written with jose, standing where
// Portcullis stands: it checks tokens and proofs the way the gateway is specified to and
// forwards what passes to the upstream. It validates the test itself (client.mjs, checks.mjs,
// the script) independently of the gateway:
//
//   REFERENCE=1 scripts/dpop-tests.sh
//
// Env: PORT (0: any), ISSUER, AUDIENCE, UPSTREAM, DPOP_ALGS (default ES256), MAX_AGE (seconds,
// default 60). dpop.mode is `required`: a token without cnf.jkt is refused.
import http from 'node:http';
import { createHash } from 'node:crypto';
import {
  EmbeddedJWK, calculateJwkThumbprint, createRemoteJWKSet, decodeProtectedHeader, jwtVerify,
} from 'jose';

const issuer = process.env.ISSUER;
const audience = process.env.AUDIENCE;
const upstream = process.env.UPSTREAM;
const algs = (process.env.DPOP_ALGS ?? 'ES256').split(/[\s,]+/).filter(Boolean);
const maxAge = Number(process.env.MAX_AGE ?? 60);
const skew = 5;
const jwks = createRemoteJWKSet(new URL(`${issuer}/jwks`));
const seen = new Map(); // jkt + jti -> until (epoch seconds)

class Refusal extends Error {
  constructor(status, challenge) {
    super(challenge);
    this.status = status;
    this.challenge = challenge;
  }
}
const dpopChallenge = (error) => `DPoP ${error ? `error="${error}", ` : ''}algs="${algs.join(' ')}"`;
const badProof = () => new Refusal(401, dpopChallenge('invalid_dpop_proof'));
const badToken = (scheme) => new Refusal(401, scheme === 'Bearer'
  ? `Bearer error="invalid_token", ${dpopChallenge()}` : dpopChallenge('invalid_token'));

async function authorize(req) {
  const m = /^(Bearer|DPoP) ([A-Za-z0-9._~+/-]+=*)$/i.exec(req.headers.authorization ?? '');
  if (!m) throw new Refusal(401, dpopChallenge());
  const scheme = m[1].toLowerCase() === 'dpop' ? 'DPoP' : 'Bearer';
  const token = m[2];
  let claims;
  try {
    ({ payload: claims } = await jwtVerify(token, jwks, { issuer, audience, algorithms: ['RS256'] }));
  } catch {
    throw badToken(scheme);
  }
  const jkt = claims.cnf?.jkt;
  if (scheme === 'Bearer') throw badToken(scheme); // bound: needs its proof; unbound: mode required
  if (!jkt) throw badToken(scheme);
  const proofs = req.headersDistinct.dpop ?? [];
  if (proofs.length !== 1) throw badProof();
  const proof = proofs[0];
  let header;
  let payload;
  try {
    header = decodeProtectedHeader(proof);
    ({ payload } = await jwtVerify(proof, EmbeddedJWK, { typ: 'dpop+jwt', algorithms: algs }));
  } catch {
    throw badProof();
  }
  if (await calculateJwkThumbprint(header.jwk) !== jkt) throw badProof();
  if (payload.htm !== req.method) throw badProof();
  const host = req.headers.host;
  const path = req.url.split('?')[0];
  let htu;
  try {
    htu = new URL(payload.htu);
  } catch {
    throw badProof();
  }
  if (`${htu.protocol}//${htu.host}${htu.pathname}` !== `http://${host}${path}`) throw badProof();
  const now = Math.floor(Date.now() / 1000);
  if (typeof payload.iat !== 'number' || payload.iat > now + skew || payload.iat < now - maxAge - skew) {
    throw badProof();
  }
  if (payload.ath !== createHash('sha256').update(token).digest('base64url')) throw badProof();
  if (typeof payload.jti !== 'string' || !payload.jti) throw badProof();
  const key = `${jkt}.${payload.jti}`;
  if ((seen.get(key) ?? 0) > now) throw badProof();
  seen.set(key, payload.iat + maxAge + 2 * skew);
}

const server = http.createServer(async (req, res) => {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  try {
    await authorize(req);
  } catch (e) {
    if (!(e instanceof Refusal)) {
      res.writeHead(500);
      res.end(String(e));
      return;
    }
    res.writeHead(e.status, { 'www-authenticate': e.challenge, 'content-type': 'application/json' });
    res.end(JSON.stringify({ error: 'refused' }));
    return;
  }
  const body = Buffer.concat(chunks);
  const r = await fetch(`${upstream}${req.url}`, {
    method: req.method,
    headers: { 'content-type': req.headers['content-type'] ?? 'application/octet-stream' },
    body: body.length ? body : undefined,
  });
  res.writeHead(r.status, { 'content-type': r.headers.get('content-type') ?? 'text/plain' });
  res.end(Buffer.from(await r.arrayBuffer()));
});

server.listen(Number(process.env.PORT ?? 0), '127.0.0.1', () => {
  console.log(`READY ${server.address().port}`);
});
