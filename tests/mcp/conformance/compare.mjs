// Compares one conformance `server` scenario run through the gateway with the same scenario run
// against the MCP server directly, check by check (checks.json of each run).
//
//   node conformance/compare.mjs <direct results dir> <gateway results dir> <scenario>
//
// The gateway passes when every check that FAILED through it also failed against the MCP server
// itself (same check id and name, at least as many times): a failure the server has on its own is
// the server's (printed, not counted); one that only appears through the gateway is the
// gateway's. Exit 0 when the gateway added no failure, 1 otherwise (or when a run is missing).
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

const [directDir, gatewayDir, scenario] = process.argv.slice(2);

function load(dir) {
  const runs = readdirSync(dir).filter((d) => d.startsWith(`server-${scenario}-`)).sort();
  if (!runs.length) return null;
  try {
    return JSON.parse(readFileSync(join(dir, runs.at(-1), 'checks.json'), 'utf8'));
  } catch {
    return null;
  }
}
const failures = (checks) => {
  const m = new Map();
  for (const c of checks) {
    if (c.status !== 'FAILURE') continue;
    const k = `${c.id} (${c.name})`;
    m.set(k, [...(m.get(k) ?? []), c]);
  }
  return m;
};

const direct = load(directDir);
const gateway = load(gatewayDir);
if (!direct?.length || !gateway?.length) {
  console.log(`  ${scenario}: no checks.json from the ${!direct?.length ? 'direct' : 'gateway'} run`);
  process.exit(1);
}
const df = failures(direct);
const gf = failures(gateway);
let added = 0;
for (const [k, list] of gf) {
  const base = df.get(k)?.length ?? 0;
  if (list.length > base) {
    added += 1;
    const c = list[base];
    console.log(`  gateway-only FAILURE ${k}: ${c.errorMessage ?? c.description}`);
    if (c.details) console.log(`    details: ${JSON.stringify(c.details).slice(0, 600)}`);
  }
}
for (const [k, list] of df) {
  const through = gf.get(k)?.length ?? 0;
  if (through >= list.length) console.log(`  (the MCP server fails this on its own too: ${k})`);
}
const n = (cs) => cs.filter((c) => c.status === 'SUCCESS').length;
console.log(`  ${scenario}: ${n(gateway)}/${gateway.length} checks pass through the gateway, ${n(direct)}/${direct.length} directly; ${added} failure(s) added by the gateway`);
process.exit(added ? 1 : 0);
