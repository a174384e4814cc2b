// The upstream behind Portcullis for the DPoP test: answers every request 200 with what it
// received, and logs one JSON line per request on stdout (after `READY <port>`), so the script
// can check that only the requests the gateway should have let through reached it.
//
//   PORT=0 node echo.mjs        (0: any free port; the READY line says which)
import http from 'node:http';

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const url = new URL(req.url, 'http://upstream');
    const seen = {
      method: req.method,
      path: url.pathname,
      case: url.searchParams.get('case'),
      authorization: req.headers.authorization ?? null,
      dpop: req.headers.dpop ?? null,
      bytes: Buffer.concat(chunks).length,
    };
    console.log(JSON.stringify(seen));
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ echo: seen }));
  });
});

server.listen(Number(process.env.PORT ?? 0), '127.0.0.1', () => {
  console.log(`READY ${server.address().port}`);
});
