// node --import ./conformance/register.mjs node_modules/@modelcontextprotocol/conformance/dist/index.js ...
// Only needed on Node.js < 22 (see fs-shim.mjs).
import { register } from 'node:module';

register('./hooks.mjs', import.meta.url);
