// Judges client.mjs's JSON line (and what the upstream saw) for scripts/mtls-tests.sh.
//
//   THUMB_A=... THUMB_B=... THUMB_C=... node checks.mjs <client.json> <echo.log>
//
// THUMB_A / THUMB_B / THUMB_C: the x5t#S256 of client certificates A, B (from the test CA)
// and C (self-signed) as openssl computes them (base64url SHA-256 of the DER), independently
// of the provider and the client.
// Prints a PASS, FAIL or SKIP line per check, each naming the RFC 8705 section it is about;
// exits 1 when any failed.
import { readFileSync } from 'node:fs';

const [clientFile, echoLog] = process.argv.slice(2);
const lines = readFileSync(clientFile, 'utf8').split('\n').filter((l) => l.trim().startsWith('{'));
if (lines.length === 0) {
  console.log(`FAIL client.mjs printed no JSON (${clientFile})`);
  process.exit(1);
}
const result = JSON.parse(lines[lines.length - 1]);
let failures = 0;
const check = (name, ok, detail) => {
  if (!ok) failures += 1;
  console.log(`${ok ? 'PASS' : 'FAIL'} ${name}${detail ? `: ${detail}` : ''}`);
};

if (result.error) {
  check('client setup (discovery, certificate-bound token from mtls-client)', false, result.error);
  process.exit(1);
}

// --- the authorization server ---------------------------------------------------------------------
const t = result.token;
const thumbA = process.env.THUMB_A;
const thumbB = process.env.THUMB_B;
const x5t = t.cnf?.['x5t#S256'];
check(
  "RFC 8705 s3.1: the provider's access token is a JWT whose cnf.x5t#S256 is client certificate A's SHA-256 thumbprint (as openssl computes it)",
  t.format === 'jwt' && Boolean(thumbA) && x5t === thumbA && x5t === t.thumbprint_a && x5t !== thumbB
    && Object.keys(t.cnf).length === 1,
  `cnf ${JSON.stringify(t.cnf)}, openssl A ${thumbA}, B ${thumbB}, token_type ${t.token_type}, aud ${t.aud}, client_id ${t.client_id}`,
);
check('RFC 8705 s3: the bound token is still a Bearer token (token_type bearer)', t.token_type === 'bearer', t.token_type);
const thumbC = process.env.THUMB_C;
const self = t.self ?? {};
const x5tC = self.cnf?.['x5t#S256'];
check(
  "RFC 8705 s2.2, s3.1: the provider issues mtls-self-client (self-signed certificate C) a JWT whose cnf.x5t#S256 is C's SHA-256 thumbprint (as openssl computes it)",
  self.format === 'jwt' && Boolean(thumbC) && x5tC === thumbC && x5tC === self.thumbprint_c
    && x5tC !== thumbA && x5tC !== thumbB && Object.keys(self.cnf ?? {}).length === 1
    && self.client_id === 'mtls-self-client' && self.token_type === 'bearer',
  `cnf ${JSON.stringify(self.cnf)}, openssl C ${thumbC}, token_type ${self.token_type}, aud ${self.aud}, client_id ${self.client_id}`,
);
check('the opaque token for the introspection route is opaque', t.opaque?.format === 'opaque', JSON.stringify(t.opaque));
check('the orders-client token is unbound (no cnf)', t.unbound?.cnf === null && t.unbound?.token_type === 'bearer', JSON.stringify(t.unbound));
const as = result.as;
check(
  'RFC 8705 s3.3, s5: discovery has tls_client_certificate_bound_access_tokens, mtls_endpoint_aliases.token_endpoint (https) and self_signed_tls_client_auth',
  as.tls_client_certificate_bound_access_tokens === true && /^https:/.test(as.mtls_token_endpoint ?? '')
    && as.self_signed_tls_client_auth === true,
  JSON.stringify({ ...as, refused: undefined }),
);
for (const [name, label] of [
  ['cert_b', 'mtls-client with certificate B'],
  ['no_cert', 'mtls-client with no certificate at the mTLS endpoint'],
  ['plain_http', 'mtls-client at the plain-HTTP token endpoint (no TLS, no certificate)'],
  ['self_cert_a', 'mtls-self-client with certificate A instead of its self-signed C'],
]) {
  const got = as.refused?.[name];
  check(
    `RFC 8705 s2.2: the provider refuses ${label} (invalid_client)`,
    got && got.issued === false && got.error === 'invalid_client',
    JSON.stringify(got),
  );
}

// --- the gateway ----------------------------------------------------------------------------------
// Section 3: a mismatch "MUST be rejected with an error, as described in [RFC6750], using an
// HTTP 401 status code and the invalid_token error code".
const INVALID_TOKEN = { status: [401], challenge: [/^Bearer\b/, /error="invalid_token"/] };
const OK = { status: [200] };
const expectations = {
  good: { ...OK, label: 'RFC 8705 s3: bound token + certificate A over TLS (oauth4webapi/undici, HTTP/1.1) -> 200' },
  good_post: { ...OK, label: 'RFC 8705 s3: the same, POST with a body -> 200' },
  good_h2: { ...OK, alpn: 'h2', label: 'RFC 8705 s3: bound token + certificate A over HTTP/2 (node:http2) -> 200' },
  resumed_1: { ...OK, label: 'RFC 8705 s3: bound token + certificate A, node:https, new TLS session -> 200' },
  resumed_2: { ...OK, resumed: true, label: 'RFC 8705 s3: the same on a resumed TLS session (certificate from the session) -> 200' },
  cert_b: { ...INVALID_TOKEN, label: 'RFC 8705 s3: the bound token with certificate B (same CA) -> 401 invalid_token' },
  no_cert: { ...INVALID_TOKEN, label: 'RFC 8705 s3: the bound token over TLS without a client certificate -> 401 invalid_token' },
  // A certificate from no CA the gateway trusts: with --tls-client-any-certificate the
  // handshake takes it, and the binding refuses the token (it names A, not C).
  untrusted_cert: { ...INVALID_TOKEN, label: 'RFC 8705 s3: the bound token (certificate A) with self-signed certificate C (accepted at the handshake by --tls-client-any-certificate) -> 401 invalid_token' },
  // The gateway's only proxy listener speaks TLS: a cleartext request gets no 2xx.
  plain_http: { status: [null, 400, 401, 403], label: 'RFC 8705 s3: the bound token in cleartext to the TLS listener -> no HTTP success' },
  unbound_no_cert: { ...INVALID_TOKEN, label: 'RFC 8705 s3 (certificateBound: Required): an unbound token, no certificate -> 401 invalid_token' },
  unbound_cert_a: { ...INVALID_TOKEN, label: 'RFC 8705 s3 (certificateBound: Required): an unbound token with certificate A -> 401 invalid_token' },
  opt_unbound: { ...OK, label: 'certificateBound: Optional: an unbound token without certificate -> 200 (control for Required)' },
  opt_bound_a: { ...OK, label: 'RFC 8705 s3 (certificateBound: Optional): bound token + certificate A -> 200' },
  opt_bound_no_cert: { ...INVALID_TOKEN, label: 'RFC 8705 s3 (certificateBound: Optional): bound token without certificate -> 401 invalid_token' },
  opt_bound_b: { ...INVALID_TOKEN, label: 'RFC 8705 s3 (certificateBound: Optional): bound token with certificate B -> 401 invalid_token' },
  opaque_a: { ...OK, label: 'RFC 8705 s3.2: bound opaque token (cnf from introspection) + certificate A -> 200' },
  opaque_b: { ...INVALID_TOKEN, label: 'RFC 8705 s3.2: bound opaque token with certificate B -> 401 invalid_token' },
  opaque_no_cert: { ...INVALID_TOKEN, label: 'RFC 8705 s3.2: bound opaque token without certificate -> 401 invalid_token' },
  opaque_unbound: { ...INVALID_TOKEN, label: 'RFC 8705 s3.2 (certificateBound: Required): unbound opaque token with certificate A -> 401 invalid_token' },
  self_good: { ...OK, label: "RFC 8705 s2.2, s3: mtls-self-client's token + its self-signed certificate C (--tls-client-any-certificate) -> 200" },
  self_cert_a: { ...INVALID_TOKEN, label: "RFC 8705 s3: mtls-self-client's token (bound to C) with certificate A (trusted CA) -> 401 invalid_token" },
  self_no_cert: { ...INVALID_TOKEN, label: "RFC 8705 s3: mtls-self-client's token (bound to C) over TLS without a client certificate -> 401 invalid_token" },
  good_after: { ...OK, label: 'RFC 8705 s3: bound token + certificate A again at the end -> 200' },
};

for (const [name, want] of Object.entries(expectations)) {
  const got = result.cases[name];
  const label = `${want.label} [${name}]`;
  if (!got) {
    check(label, false, 'not run');
    continue;
  }
  const problems = [];
  const refusedAtTls = got.status === null && want.status.includes(null);
  if (got.error && !refusedAtTls) problems.push(`request failed: ${got.error.split('\n')[0]}`);
  if (!want.status.includes(got.status)) problems.push(`status ${got.status}, want ${want.status.map(String).join(' or ')}`);
  if (got.status !== null) {
    for (const re of want.challenge ?? []) {
      if (!re.test(got.challenge ?? '')) problems.push(`WWW-Authenticate ${JSON.stringify(got.challenge)} does not match ${re}`);
    }
  }
  if (want.alpn && got.alpn !== want.alpn) problems.push(`ALPN ${got.alpn}, want ${want.alpn}`);
  if (want.resumed && got.tls_session_reused !== true) problems.push(`the TLS session was not resumed (${got.tls_protocol})`);
  const seen = refusedAtTls
    ? `no HTTP answer (${got.error.split('\n')[0].slice(0, 160)})`
    : `${got.status}${got.challenge ? ` ${got.challenge}` : ''}${got.tls_protocol ? ` (${got.tls_protocol}${got.tls_session_reused ? ', resumed' : ''})` : ''}${got.alpn ? ` (ALPN ${got.alpn})` : ''}`;
  check(label, problems.length === 0,
    problems.length ? `${problems.join('; ')}${got.body ? ` (body ${JSON.stringify(got.body.slice(0, 120))})` : ''}` : seen);
}
for (const name of Object.keys(result.cases)) {
  if (!(name in expectations)) check(name, false, 'no expectation for this case');
}
console.log('SKIP RFC 8705 s3: the bound token on a plain-HTTP listener: portcullis standalone has one proxy listener, TLS-only with --tls-cert (case plain_http tries that port in cleartext)');

// The upstream saw exactly the requests that were let through, each once.
if (echoLog) {
  const seen = readFileSync(echoLog, 'utf8').split('\n')
    .filter((l) => l.startsWith('{')).map((l) => JSON.parse(l));
  const through = seen.map((s) => s.case).sort();
  const expected = Object.entries(expectations)
    .filter(([, w]) => w.status.length === 1 && w.status[0] === 200).map(([n]) => n).sort();
  check('the upstream received only the accepted requests, once each (no refused request reached it)',
    JSON.stringify(through) === JSON.stringify(expected),
    `saw [${through.join(', ')}], expected [${expected.join(', ')}]`);
  const post = seen.find((s) => s.case === 'good_post');
  check('the POST body reached the upstream', post?.method === 'POST' && post.bytes > 0, JSON.stringify(post));
}

process.exit(failures ? 1 : 0);
