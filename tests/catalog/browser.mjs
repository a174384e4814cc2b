// The API catalog page in a real browser, for scripts/catalog-tests.sh: Debian's headless
// Chromium driven by puppeteer-core, axe-core injected into each page, and plain HTTP checks
// of the JSON API next to it.
//
//   CATALOG_URL=http://127.0.0.1:PORT TOKEN=... TOKEN_NOREAD=... TOKEN_ALL=... CANARY=... \
//   CHROMIUM=/usr/bin/chromium ARTIFACTS=DIR node browser.mjs
//
// TOKEN: catalog:read catalog:namespace:shop (the viewer, alice); TOKEN_NOREAD: a valid token
// without catalog:read; TOKEN_ALL: catalog:read catalog:all; CANARY: the value of the LLM
// provider key Secret, which no page may show. Prints a PASS or FAIL line per check, full-page
// screenshots into ARTIFACTS, and `N passed, N failed` last; exits 1 when any check failed.
import { createRequire } from 'node:module';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import puppeteer from 'puppeteer-core';

const require = createRequire(import.meta.url);
const AXE = require.resolve('axe-core/axe.min.js');
const env = (name) => {
  const v = process.env[name];
  if (!v) {
    console.log(`FAIL setup: ${name} is not set`);
    process.exit(2);
  }
  return v;
};
const BASE = env('CATALOG_URL');
const TOKEN = env('TOKEN');
const TOKEN_NOREAD = env('TOKEN_NOREAD');
const TOKEN_ALL = env('TOKEN_ALL');
const CANARY = env('CANARY');
const ARTIFACTS = env('ARTIFACTS');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
mkdirSync(ARTIFACTS, { recursive: true });

// What alice (catalog:read catalog:namespace:shop) must see, and must not.
const VISIBLE = ['shop/orders', 'shop/orders-v1', 'shop/assistant', 'other/weather', 'other/inventory'];
const HIDDEN = ['other/secret-api', 'other/ledger'];
const ALL = [...VISIBLE, ...HIDDEN].sort();
const SUCCESSOR = 'https://orders.shop.test/v2';

let passed = 0;
let failed = 0;
const check = (name, ok, detail) => {
  if (ok) passed += 1;
  else failed += 1;
  console.log(`${ok ? 'PASS' : 'FAIL'} ${name}${!ok && detail !== undefined ? `: ${detail}` : ''}`);
  return ok;
};
// A check whose body may throw (a missing element, a timeout): the exception is the failure.
const step = async (name, fn) => {
  try {
    const r = await fn();
    if (r === true || r === undefined) return check(name, true);
    return check(name, false, typeof r === 'string' ? r : JSON.stringify(r));
  } catch (e) {
    return check(name, false, String(e && e.message ? e.message : e).split('\n')[0]);
  }
};
const same = (a, b) => JSON.stringify([...a].sort()) === JSON.stringify([...b].sort());

// Every body the catalog sent us (HTML and JSON), for the no-secrets check at the end.
const seen = [];
const remember = (where, text) => seen.push({ where, text });

// --- plain HTTP: the JSON API, visibility, status codes ------------------------------------
const get = async (path, token, init = {}) => {
  const headers = { ...(init.headers || {}) };
  if (token) headers.authorization = `Bearer ${token}`;
  const r = await fetch(BASE + path, { redirect: 'manual', ...init, headers });
  const text = await r.text();
  remember(`${init.method || 'GET'} ${path}`, text);
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: r.status, headers: r.headers, text, json };
};
const ids = (json) => (json && Array.isArray(json.apis) ? json.apis.map((a) => a.id) : null);

await step('GET /healthz is 200', async () => (await get('/healthz')).status === 200 || 'not 200');
await step('JSON: GET /api/v1/apis lists exactly what alice may see (shop routes, Public and Namespaces [shop] routes of other)', async () => {
  const r = await get('/api/v1/apis', TOKEN);
  if (r.status !== 200) return `status ${r.status}: ${r.text.slice(0, 200)}`;
  return same(ids(r.json), VISIBLE) || `ids ${JSON.stringify(ids(r.json))}`;
});
await step('JSON: catalog:all sees every API, other/secret-api and other/ledger included', async () => {
  const r = await get('/api/v1/apis', TOKEN_ALL);
  if (r.status !== 200) return `status ${r.status}`;
  return same(ids(r.json), ALL) || `ids ${JSON.stringify(ids(r.json))}`;
});
await step('JSON: GET /api/v1/apis/shop/orders is 200 with id shop/orders', async () => {
  const r = await get('/api/v1/apis/shop/orders', TOKEN);
  return (r.status === 200 && r.json && r.json.id === 'shop/orders') || `status ${r.status}: ${r.text.slice(0, 200)}`;
});
for (const path of ['/api/v1/apis/other/secret-api', '/api/v1/apis/other/ledger', '/api/v1/apis/shop/nope', '/apis/other/secret-api', '/apis/shop/nope']) {
  await step(`${path} is 404 for alice (invisible or unknown)`, async () => {
    const r = await get(path, TOKEN);
    return r.status === 404 || `status ${r.status}`;
  });
}
await step('catalog:all may open /apis/other/secret-api (200)', async () => {
  const r = await get('/apis/other/secret-api', TOKEN_ALL);
  return r.status === 200 || `status ${r.status}`;
});
await step('JSON: no token is 401, a token without catalog:read is 403', async () => {
  const none = await get('/api/v1/apis');
  const noread = await get('/api/v1/apis', TOKEN_NOREAD);
  return (none.status === 401 && noread.status === 403) || `no token ${none.status}, without catalog:read ${noread.status}`;
});
await step('a forged token (bad signature) is 401', async () => {
  const [h, p] = TOKEN.split('.');
  const r = await get('/api/v1/apis', `${h}.${p}.${'A'.repeat(342)}`);
  return r.status === 401 || `status ${r.status}`;
});
await step('JSON: filters: ?tag=legacy gives shop/orders-v1, ?scope=orders:write gives shop/orders', async () => {
  const t = ids((await get('/api/v1/apis?tag=legacy', TOKEN)).json);
  const s = ids((await get(`/api/v1/apis?scope=${encodeURIComponent('orders:write')}`, TOKEN)).json);
  return (same(t || [], ['shop/orders-v1']) && same(s || [], ['shop/orders'])) || `tag=legacy ${JSON.stringify(t)}, scope=orders:write ${JSON.stringify(s)}`;
});
await step('JSON: /api/v1/apis/shop/assistant/openapi.json is an OpenAPI document', async () => {
  const r = await get('/api/v1/apis/shop/assistant/openapi.json', TOKEN);
  if (r.status !== 200) return `status ${r.status}`;
  return (r.json && typeof r.json.openapi === 'string' && r.json.paths && Object.keys(r.json.paths).length > 0) || r.text.slice(0, 200);
});

// --- the browser --------------------------------------------------------------------------
// Chromium refuses to run as root with its sandbox on (its zygote needs an unprivileged user
// for the setuid/namespace sandbox); CI runs as root, so there and only there --no-sandbox.
// The pages are our own loopback server's.
const args = ['--disable-gpu', '--no-first-run', '--no-default-browser-check', '--hide-scrollbars'];
if (process.getuid && process.getuid() === 0) args.push('--no-sandbox');
const browser = await puppeteer.launch({
  executablePath: CHROMIUM,
  headless: true,
  args,
  defaultViewport: { width: 1280, height: 800 },
});
const version = await browser.version();
console.log(`   browser: ${version} (${CHROMIUM})`);

const newPage = async (context) => {
  const page = await (context || browser).newPage();
  page.setDefaultTimeout(10_000);
  // The page's Content-Security-Policy (rightly) refuses inline scripts, and puppeteer injects
  // axe-core as one; bypassing the CSP lets the audit run. Nothing here relies on the CSP.
  await page.setBypassCSP(true);
  page.on('pageerror', (e) => console.log(`   page error on ${page.url()}: ${e.message}`));
  return page;
};
const shot = async (page, name) => {
  const path = join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  return path;
};
const html = async (page) => {
  const text = await page.content();
  remember(page.url(), text);
  return text;
};
const listed = (page) => page.$$eval('ul#apis li.api a.api-name', (as) => as.map((a) => a.textContent.trim()));

const AXE_FAIL = new Set(['serious', 'critical']);
const axe = async (page, name) =>
  step(`axe-core on the ${name}: no serious or critical violations`, async () => {
    await page.addScriptTag({ path: AXE });
    const result = await page.evaluate(async () =>
      // eslint-disable-next-line no-undef
      axe.run(document, { resultTypes: ['violations'] }),
    );
    const bad = [];
    for (const v of result.violations) {
      const nodes = v.nodes.map((n) => n.target.join(' ')).slice(0, 5).join(', ');
      console.log(`   axe ${name}: [${v.impact}] ${v.id}: ${v.help} (${v.nodes.length} node(s): ${nodes}) ${v.helpUrl}`);
      if (AXE_FAIL.has(v.impact)) bad.push(`${v.id} (${v.impact})`);
    }
    return bad.length === 0 || bad.join(', ');
  });

try {
  const ctx = await browser.createBrowserContext();
  const page = await newPage(ctx);

  // 1. No credentials: 401 with the login form.
  let res = await page.goto(`${BASE}/`);
  await step('GET / without credentials is a 401 HTML page', async () =>
    (res.status() === 401 && /text\/html/.test(res.headers()['content-type'] || '')) || `status ${res.status()}, ${res.headers()['content-type']}`);
  // The contract says input#token; the page has a <textarea id="token"> (a JWT is long), which
  // is as good a labelled text field: either is accepted.
  await step('the 401 page has form#login-form (POST /login) with a labelled text field #token (input or textarea) name=token and a submit button', async () => {
    const f = await page.$eval('form#login-form', (form) => {
      const input = form.querySelector('input#token:not([type=hidden]), textarea#token');
      const labels = input ? [...input.labels].map((l) => l.textContent.trim()).filter(Boolean) : [];
      return {
        method: (form.getAttribute('method') || 'get').toLowerCase(),
        action: new URL(form.action, location.href).pathname,
        input: !!input,
        name: input && input.name,
        labels,
        submit: !!form.querySelector('button[type=submit], button:not([type]), input[type=submit]'),
      };
    });
    return (f.method === 'post' && f.action === '/login' && f.input && f.name === 'token' && f.labels.length > 0 && f.submit) || f;
  });
  await html(page);
  await shot(page, 'login');
  await axe(page, 'login page');

  // 2. Login through the form.
  await page.type('#token', TOKEN);
  const chain = [];
  page.on('response', (r) => chain.push({ url: r.url(), status: r.status(), method: r.request().method() }));
  [res] = await Promise.all([
    page.waitForNavigation(),
    page.click('form#login-form button[type=submit], form#login-form button:not([type]), form#login-form input[type=submit]'),
  ]);
  await step('submitting the form POSTs /login, which answers 303 to /', async () => {
    const login = chain.find((c) => c.method === 'POST' && new URL(c.url).pathname === '/login');
    const final = new URL(page.url());
    return (login && login.status === 303 && final.pathname === '/' && res.status() === 200) || { chain, final: page.url(), status: res.status() };
  });
  await step('the session cookie is HttpOnly', async () => {
    const cookies = await page.cookies();
    console.log(`   cookies: ${cookies.map((c) => `${c.name} httpOnly=${c.httpOnly} secure=${c.secure} sameSite=${c.sameSite} path=${c.path}`).join('; ')}`);
    return (cookies.length > 0 && cookies.every((c) => c.httpOnly)) || cookies.map((c) => ({ name: c.name, httpOnly: c.httpOnly }));
  });
  await step('the session cookie is not readable from scripts (document.cookie empty)', async () => {
    const c = await page.evaluate(() => document.cookie);
    return c === '' || `document.cookie = ${c.slice(0, 40)}...`;
  });
  await step('the list (logged in) shows orders, orders-v1, assistant, weather and inventory, not other/secret-api nor other/ledger', async () => {
    const names = await listed(page);
    return same(names, VISIBLE) || names;
  });
  await step('each li.api has a.api-name href /apis/NS/NAME and a span.stage with its stage class', async () => {
    const items = await page.$$eval('ul#apis li.api', (lis) =>
      lis.map((li) => {
        const a = li.querySelector('a.api-name');
        const stage = li.querySelector('span.stage');
        return { text: a && a.textContent.trim(), href: a && a.getAttribute('href'), stage: stage ? [...stage.classList] : null };
      }));
    const bad = items.filter((i) => {
      const expected = i.text === 'shop/orders-v1' ? 'stage-deprecated' : 'stage-published';
      return i.href !== `/apis/${i.text}` || !i.stage || !i.stage.includes(expected);
    });
    return bad.length === 0 || bad;
  });
  await step('shop/orders shows its tags orders and commerce as span.tag', async () => {
    const tags = await page.$$eval('ul#apis li.api', (lis) => {
      const li = lis.find((l) => l.querySelector('a.api-name')?.textContent.trim() === 'shop/orders');
      return li ? [...li.querySelectorAll('span.tag')].map((t) => t.textContent.trim()) : null;
    });
    return same(tags || [], ['orders', 'commerce']) || tags;
  });
  await html(page);
  await shot(page, 'list');
  await axe(page, 'list page');

  // 3. Search through the form.
  await page.$eval('input#q', (i) => {
    i.value = '';
  });
  await page.type('input#q', 'legacy');
  await Promise.all([page.waitForNavigation(), page.$eval('form#search', (f) => f.requestSubmit())]);
  await step('search form#search with input#q (labelled): q=legacy shows only shop/orders-v1', async () => {
    const labelled = await page.$eval('input#q', (i) => i.name === 'q' && (i.labels.length > 0 || !!i.getAttribute('aria-label')));
    const names = await listed(page);
    const q = new URL(page.url()).searchParams.get('q');
    return (labelled && q === 'legacy' && same(names, ['shop/orders-v1'])) || { labelled, q, names };
  });
  await html(page);
  await shot(page, 'search');
  await axe(page, 'search results');

  // q matches name, description, tags, scopes and hosts; tag= and scope= filter exactly.
  const cases = [
    ['q=stock:read (a scope)', '?q=stock%3Aread', ['other/inventory']],
    ['q=v1.orders.shop (a host)', '?q=v1.orders.shop', ['shop/orders-v1']],
    ['q=forecasts (a description word, any case)', '?q=FORECASTS', ['other/weather']],
    ['q=assist (part of a name)', '?q=assist', ['shop/assistant']],
    ['q=secret (an invisible API) shows nothing', '?q=secret', []],
    ['tag=orders', '?tag=orders', ['shop/orders', 'shop/orders-v1']],
    ['tag=order (not a tag: exact match only)', '?tag=order', []],
    ['scope=orders:write', '?scope=orders%3Awrite', ['shop/orders']],
    ['scope=orders (not a scope: exact match only)', '?scope=orders', []],
  ];
  for (const [name, query, expected] of cases) {
    await step(`list ${name}: ${expected.length ? expected.join(', ') : 'nothing'}`, async () => {
      const r = await page.goto(`${BASE}/${query}`);
      const names = await listed(page);
      await html(page);
      return (r.status() === 200 && same(names, expected)) || { status: r.status(), names };
    });
  }
  res = await page.goto(`${BASE}/?tag=orders`);
  await shot(page, 'tag-filter');
  await step(`the search text is echoed as text: q="><img id=xss-q> adds no element and stays the field's value`, async () => {
    const q = '"><img id=xss-q>';
    await page.goto(`${BASE}/?q=${encodeURIComponent(q)}`);
    const r = await page.evaluate(() => ({ injected: !!document.querySelector('#xss-q'), value: document.querySelector('input#q')?.value }));
    await html(page);
    return (!r.injected && r.value === q) || r;
  });

  // 4. An API's detail, reached by its link in the list.
  await page.goto(`${BASE}/`);
  await Promise.all([page.waitForNavigation(), page.click('ul#apis li.api a.api-name[href="/apis/shop/orders"]')]);
  await step('the list links to /apis/shop/orders, whose h1 names the API', async () => {
    const h1 = await page.$eval('h1', (h) => h.textContent.trim());
    return (new URL(page.url()).pathname === '/apis/shop/orders' && /orders/.test(h1) && !/orders-v1/.test(h1)) || { url: page.url(), h1 };
  });
  await step('shop/orders: table#rules has one row per rule (methods, path, scopes)', async () => {
    const rows = await page.$$eval('table#rules tbody tr', (trs) => trs.map((tr) => tr.textContent.replace(/\s+/g, ' ').trim()));
    const ok = rows.length === 3
      && rows.some((r) => /GET/.test(r) && /\/orders/.test(r) && /orders:read/.test(r))
      && rows.some((r) => /POST/.test(r) && /DELETE/.test(r) && /orders:write/.test(r))
      && rows.some((r) => /\/health/.test(r));
    return ok || rows;
  });
  await step('shop/orders: #issuers names https://issuer.portcullis.local, #owner the team and contact', async () => {
    const issuers = await page.$eval('#issuers', (e) => e.textContent);
    const owner = await page.$eval('#owner', (e) => e.textContent);
    return (issuers.includes('https://issuer.portcullis.local') && owner.includes('Order Management') && owner.includes('orders-team@shop.test')) || { issuers, owner };
  });
  await step('shop/orders (Published): no #deprecation-banner', async () => (await page.$('#deprecation-banner')) === null || 'banner present');
  await html(page);
  await shot(page, 'detail');
  await axe(page, 'detail page (shop/orders)');

  // 5. The deprecated API's banner.
  res = await page.goto(`${BASE}/apis/shop/orders-v1`);
  await step('shop/orders-v1: #deprecation-banner (role=alert) mentions the sunset date and links the successor', async () => {
    const b = await page.$eval('#deprecation-banner', (e) => ({
      role: e.getAttribute('role'),
      text: e.textContent.replace(/\s+/g, ' ').trim(),
      links: [...e.querySelectorAll('a')].map((a) => a.getAttribute('href')),
      visible: e.getBoundingClientRect().height > 0,
    }));
    return (res.status() === 200 && b.role === 'alert' && b.visible && b.text.includes('2027-06-30') && b.links.includes(SUCCESSOR)) || b;
  });
  await html(page);
  await shot(page, 'deprecated');
  await axe(page, 'deprecated detail page (shop/orders-v1)');

  // 6. An LLM route: its operations, from the OpenAPI document.
  res = await page.goto(`${BASE}/apis/shop/assistant`);
  await step('shop/assistant (LLM): #openapi lists .operation elements (POST /v1/chat/completions, POST /prompts/summarize)', async () => {
    const ops = await page.$$eval('#openapi .operation', (es) => es.map((e) => e.textContent.replace(/\s+/g, ' ').trim()));
    const has = (m, p) => ops.some((o) => o.includes(m) && o.includes(p));
    return (res.status() === 200 && has('POST', '/v1/chat/completions') && has('POST', '/prompts/summarize')) || ops;
  });
  await step('shop/assistant links /api/v1/apis/shop/assistant/openapi.json', async () => {
    const hrefs = await page.$$eval('a', (as) => as.map((a) => new URL(a.href).pathname));
    return hrefs.includes('/api/v1/apis/shop/assistant/openapi.json') || hrefs;
  });
  await html(page);
  await shot(page, 'llm-detail');
  await axe(page, 'LLM detail page (shop/assistant)');

  // 7. Logout clears the cookie.
  await page.goto(`${BASE}/`);
  await step('POST /logout clears the session: / is the 401 login page again', async () => {
    const form = await page.$('form[action="/logout"]');
    if (form) {
      await Promise.all([page.waitForNavigation(), page.$eval('form[action="/logout"]', (f) => f.requestSubmit())]);
    } else {
      console.log('   (no form[action="/logout"] on the list: POST /logout by fetch from the page)');
      await page.evaluate(() => fetch('/logout', { method: 'POST', credentials: 'same-origin' }));
    }
    const r = await page.goto(`${BASE}/`);
    const login = await page.$('form#login-form');
    return (r.status() === 401 && login !== null) || `status ${r.status()}, login form ${login !== null}`;
  });
  await ctx.close();

  // 8. A bad token through the form does not log in.
  {
    const c = await browser.createBrowserContext();
    const p = await newPage(c);
    await p.goto(`${BASE}/`);
    await p.type('#token', 'not-a-token');
    await Promise.all([p.waitForNavigation(), p.click('form#login-form button[type=submit], form#login-form button:not([type]), form#login-form input[type=submit]')]);
    await step('a malformed token through the form does not log in (no list, login form again)', async () => {
      const r = await p.goto(`${BASE}/`);
      const list = await p.$('ul#apis');
      return (r.status() === 401 && list === null) || `status ${r.status()}, list shown ${list !== null}`;
    });
    await html(p);
    await c.close();
  }

  // 9. Authorization: Bearer instead of the cookie; a token without catalog:read is 403.
  {
    const c = await browser.createBrowserContext();
    const p = await newPage(c);
    await p.setExtraHTTPHeaders({ authorization: `Bearer ${TOKEN}` });
    let r = await p.goto(`${BASE}/`);
    await step('Authorization: Bearer works in place of the cookie (200, same list)', async () => {
      const names = await listed(p);
      return (r.status() === 200 && same(names, VISIBLE)) || { status: r.status(), names };
    });
    await p.setExtraHTTPHeaders({ authorization: `Bearer ${TOKEN_NOREAD}` });
    r = await p.goto(`${BASE}/`);
    await step('a token without catalog:read gets the 403 page, with no API listed', async () => {
      const list = await p.$('ul#apis li.api');
      return (r.status() === 403 && list === null) || `status ${r.status()}, api listed ${list !== null}`;
    });
    await html(p);
    await shot(p, 'forbidden');
    await p.setExtraHTTPHeaders({ authorization: `Bearer ${TOKEN_ALL}` });
    r = await p.goto(`${BASE}/apis/other/ledger`);
    await step('other/ledger (seen with catalog:all): its description, which has HTML in it, is shown as text, not markup', async () => {
      const x = await p.evaluate(() => ({
        injected: !!document.querySelector('#xss-probe'),
        shown: document.body.textContent.includes('<img id="xss-probe"'),
      }));
      return (r.status() === 200 && !x.injected && x.shown) || { status: r.status(), ...x };
    });
    await html(p);
    await c.close();
  }
} catch (e) {
  check('browser session', false, e.stack || String(e));
} finally {
  await browser.close();
}

// --- never any key material or secret -------------------------------------------------------
const leaks = (needle) => [...new Set(seen.filter((s) => s.text.includes(needle)).map((s) => s.where))];
check(`no page or JSON answer contains "-----BEGIN" (${seen.length} bodies)`, leaks('-----BEGIN').length === 0, leaks('-----BEGIN').join(', '));
check('no page or JSON answer contains the LLM provider key (the Secret value)', leaks(CANARY).length === 0, leaks(CANARY).join(', '));
check('no page or JSON answer echoes the viewer token', leaks(TOKEN).length === 0, leaks(TOKEN).join(', '));

console.log(`   screenshots: ${ARTIFACTS}`);
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
