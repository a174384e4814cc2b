// Judges client.mjs's JSON line (and what the upstream saw) for scripts/dpop-tests.sh.
//
//   node checks.mjs <client.json> <echo.log>
//
// Prints a PASS or FAIL line per check; exits 1 when any failed.
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
  check('client setup (discovery, DPoP-bound token)', false, result.error);
  process.exit(1);
}

const t = result.token;
check(
  'the authorization server issued a DPoP-bound token (token_type DPoP, cnf.jkt = proof key thumbprint)',
  t.token_type === 'dpop' && t.cnf_jkt && t.cnf_jkt === t.thumbprint,
  JSON.stringify(t),
);

// Expectations per case. challenge: a list of regular expressions the WWW-Authenticate value
// must all match.
const PROOF_ERROR = [/\bDPoP\b/, /error="invalid_dpop_proof"/, /algs="[^"]*\bES256\b[^"]*"/];
const OK = { status: [200] };
const expectations = {
  good: OK,
  good_post: OK,
  control: OK,
  c2_first: OK,
  good_after: OK,
  a_bearer: { status: [401], challenge: [/invalid_token/] },
  a2_bearer_with_proof: { status: [400, 401] },
  b_other_key: { status: [401], challenge: PROOF_ERROR },
  b2_forged_jwk: { status: [401], challenge: PROOF_ERROR },
  c_replay: { status: [401], challenge: PROOF_ERROR },
  c2_replay: { status: [401], challenge: PROOF_ERROR },
  d_htu_path: { status: [401], challenge: PROOF_ERROR },
  d2_htu_port: { status: [401], challenge: PROOF_ERROR },
  e_htm: { status: [401], challenge: PROOF_ERROR },
  f1_no_ath: { status: [401], challenge: PROOF_ERROR },
  f2_wrong_ath: { status: [401], challenge: PROOF_ERROR },
  g_iat_old: { status: [401], challenge: PROOF_ERROR },
  g2_iat_future: { status: [401], challenge: PROOF_ERROR },
  h_typ_jwt: { status: [401], challenge: PROOF_ERROR },
  i1_hs256: { status: [401], challenge: PROOF_ERROR },
  i2_none: { status: [401], challenge: PROOF_ERROR },
  i3_alg_not_allowed: { status: [401], challenge: PROOF_ERROR },
  j_private_d: { status: [401], challenge: PROOF_ERROR },
  // No proof / two proofs: a refusal, 400 (malformed request) or 401; a 401 names DPoP.
  k_no_proof: { status: [400, 401], challenge401: [/\bDPoP\b/] },
  l_two_proofs: { status: [400, 401], challenge401: [/\bDPoP\b/] },
  // dpop.mode required: a token bound to no key is refused, with a DPoP challenge.
  m_unbound_bearer: { status: [401], challenge: [/\bDPoP\b/] },
  n_unbound_dpop: { status: [400, 401] },
};
// RFC 9449 section 9, when the run has a nonce route (NONCE_URL).
const NONCE_ERROR = [/\bDPoP\b/, /error="use_dpop_nonce"/];
if (Object.keys(result.cases).some((n) => n.startsWith('nonce_'))) {
  Object.assign(expectations, {
    nonce_first: { status: [401], challenge: NONCE_ERROR, nonce: true },
    nonce_retry: OK,
    nonce_again: OK,
    nonce_missing: { status: [401], challenge: NONCE_ERROR, nonce: true },
    nonce_forged: { status: [401], challenge: NONCE_ERROR, nonce: true },
    nonce_by_hand: OK,
  });
}

for (const [name, want] of Object.entries(expectations)) {
  const got = result.cases[name];
  if (!got) {
    check(name, false, 'not run');
    continue;
  }
  const problems = [];
  if (got.error) problems.push(`request failed: ${got.error.split('\n')[0]}`);
  if (got.bound_to_proof_key === false) problems.push('setup: the token is not bound to the proof key');
  if (!want.status.includes(got.status)) problems.push(`status ${got.status}, want ${want.status.join(' or ')}`);
  if (want.nonce && !got.nonce) problems.push('no DPoP-Nonce header with the use_dpop_nonce refusal');
  const patterns = [...(want.challenge ?? []), ...(got.status === 401 ? want.challenge401 ?? [] : [])];
  for (const re of patterns) {
    if (!re.test(got.challenge ?? '')) problems.push(`WWW-Authenticate ${JSON.stringify(got.challenge)} does not match ${re}`);
  }
  const seen = `${got.status}${got.challenge ? ` ${got.challenge}` : ''}`;
  check(name, problems.length === 0, problems.length ? `${problems.join('; ')}${got.body ? ` (body ${JSON.stringify(got.body.slice(0, 120))})` : ''}` : seen);
}
for (const name of Object.keys(result.cases)) {
  if (!(name in expectations)) check(name, false, 'no expectation for this case');
}

// RFC 9449 section 7.1: `algs` lists the algorithms the resource server accepts, i.e. the
// issuer's dpop.algorithms (EXPECT_ALGS, default ES256), not more.
{
  const want = (process.env.EXPECT_ALGS ?? 'ES256').split(/\s+/).filter(Boolean).sort().join(' ');
  const wrong = [];
  for (const [name, got] of Object.entries(result.cases)) {
    const m = /\bDPoP\b.*?\balgs="([^"]*)"/.exec(got.challenge ?? '');
    if (!m) continue;
    const algs = m[1].split(/\s+/).filter(Boolean).sort().join(' ');
    if (algs !== want) wrong.push(`${name}: algs="${m[1]}"`);
  }
  const distinct = [...new Set(wrong.map((w) => w.replace(/^[^:]*: /, '')))];
  check(`DPoP challenges advertise exactly the configured algorithms (algs="${want}")`,
    wrong.length === 0, wrong.length ? `${wrong.length} challenge(s) with ${distinct.join(', ')}` : '');
}

// The upstream saw exactly the requests that were let through, each once.
if (echoLog) {
  const seen = readFileSync(echoLog, 'utf8').split('\n')
    .filter((l) => l.startsWith('{')).map((l) => JSON.parse(l));
  const through = seen.map((s) => s.case).sort();
  const expected = Object.entries(expectations)
    .filter(([, w]) => w.status.length === 1 && w.status[0] === 200).map(([n]) => n).sort();
  check('the upstream received only the accepted requests, once each',
    JSON.stringify(through) === JSON.stringify(expected),
    `saw [${through.join(', ')}], expected [${expected.join(', ')}]`);
  const post = seen.find((s) => s.case === 'good_post');
  check('the POST body reached the upstream', post?.method === 'POST' && post.bytes > 0, JSON.stringify(post));
}

process.exit(failures ? 1 : 0);
