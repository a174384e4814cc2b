// A minimal MCP server (the *upstream* behind Portcullis) for the MCP end-to-end tests.
//
//   PORT=0 node server.mjs          prints `READY <port>` when listening on 127.0.0.1
//
// Serves MCP over Streamable HTTP, statelessly, at POST /mcp with the official TypeScript SDK v2
// (`createMcpHandler`): protocol revision 2026-07-28 (no initialize, `server/discover`,
// `Mcp-Method`/`Mcp-Name` headers validated against the body by the SDK) and 2025-era
// clients (initialize, stateless) on the same endpoint.
//
// Tools:
//   get_weather        {city: string}  -> "Weather in <city>: sunny, 21°C"
//   get_forecast       {region: string (x-mcp-header "Region": clients mirror it in
//                      `Mcp-Param-Region`, SEP-2243), days?: integer} -> "Forecast for <region>: ..."
//   delete_everything  {}              -> "deleted everything" (the gateway should demand a wider scope)
//
// Paths: any path ending in /mcp (/mcp, /public/mcp, ...) is the MCP endpoint, so one server
// can sit behind several gateway routes.
//
// The server does NO authorization itself: the gateway in front of it is the OAuth resource
// server. To prove the gateway never forwards the client's token (the MCP spec forbids token
// passthrough), every request's headers are recorded:
//   GET  /__seen    JSON array of {method, path, headers, rawHeaders, body} for every request seen
//                   (not /__seen itself); `body` is the parsed JSON body (or the raw text when
//                   it is not JSON, null when empty), as the MCP handler got it
//   POST /__reset   clears the list
import http from 'node:http';
import { createMcpHandler, McpServer } from '@modelcontextprotocol/server';
import { toNodeHandler } from '@modelcontextprotocol/node';
import * as z from 'zod/v4';

const port = Number(process.env.PORT ?? 0);
const seen = [];

const handler = createMcpHandler(
  () => {
    const server = new McpServer({ name: 'portcullis-test-upstream', version: '1.0.0' });
    server.registerTool(
      'get_weather',
      {
        description: 'Current weather for a city',
        inputSchema: z.object({ city: z.string() }),
      },
      async ({ city }) => ({ content: [{ type: 'text', text: `Weather in ${city}: sunny, 21°C` }] }),
    );
    server.registerTool(
      'get_forecast',
      {
        description: 'Forecast for a region (the region travels in the Mcp-Param-Region header too)',
        inputSchema: z.object({
          region: z.string().meta({ 'x-mcp-header': 'Region' }),
          days: z.number().int().optional(),
        }),
      },
      async ({ region, days }) => ({
        content: [{ type: 'text', text: `Forecast for ${region}: sunny for ${days ?? 1} day(s)` }],
      }),
    );
    server.registerTool(
      'delete_everything',
      {
        description: 'Deletes everything (needs an elevated scope at the gateway)',
        inputSchema: z.object({}),
        annotations: { destructiveHint: true },
      },
      async () => ({ content: [{ type: 'text', text: 'deleted everything' }] }),
    );
    return server;
  },
  { onerror: (e) => console.error('mcp handler error:', e?.message ?? e) },
);
const mcp = toNodeHandler(handler, { onerror: (e) => console.error('node adapter error:', e?.message ?? e) });

const json = (res, code, body) => {
  res.writeHead(code, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
};

const server = http.createServer((req, res) => {
  const path = req.url.split('?')[0];
  if (path === '/__seen') {
    if (req.method === 'GET') return json(res, 200, seen);
    return json(res, 405, { error: 'method not allowed' });
  }
  if (path === '/__reset' && req.method === 'POST') {
    seen.length = 0;
    return json(res, 200, { reset: true });
  }
  // rawHeaders keeps duplicates and the casing the gateway sent; headers is the lower-cased map.
  const entry = { method: req.method, path: req.url, headers: { ...req.headers }, rawHeaders: req.rawHeaders, body: null };
  seen.push(entry);
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('error', (e) => console.error('request error:', e));
  req.on('end', () => {
    const text = Buffer.concat(chunks).toString('utf8');
    let parsed;
    if (text) {
      try {
        parsed = JSON.parse(text);
        entry.body = parsed;
      } catch {
        entry.body = text;
        if (path.endsWith('/mcp') && req.method === 'POST') {
          return json(res, 400, { jsonrpc: '2.0', id: null, error: { code: -32700, message: 'Parse error' } });
        }
      }
    }
    if (!path.endsWith('/mcp')) return json(res, 404, { error: 'not found', path });
    // The body was read here (to record it): hand it over parsed.
    mcp(req, res, parsed).catch((e) => {
      console.error('mcp error:', e);
      if (!res.headersSent) json(res, 500, { error: String(e) });
    });
  });
});

server.listen(port, '127.0.0.1', () => {
  console.log(`READY ${server.address().port}`);
});
const stop = async () => {
  await handler.close().catch(() => {});
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 1000).unref();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
