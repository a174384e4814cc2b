// @modelcontextprotocol/conformance 0.2.x imports `globSync` from 'fs', which Node.js only has
// from 22 on; this machine has Node 20. The import is only *used* by `tier-check`, so give the
// conformance bundle an 'fs' that is node:fs plus a globSync that throws.
import fs from 'node:fs';

export * from 'node:fs';
export default fs;
export function globSync() {
  throw new Error('fs.globSync needs Node.js >= 22 (only the tier-check command uses it)');
}
