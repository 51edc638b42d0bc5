// End-to-end test of the chatd page in a real headless Chromium, driven by playwright-core.
//
// Run it through ./run.sh, which builds chatd, writes a config and sets:
//   CHATD_BIN     the chatd binary
//   CHATD_CONFIG  its config file (listen = "127.0.0.1:PORT")
//   CHATD_URL     http://127.0.0.1:PORT/
//   CHATD_PIDFILE where the server's pid is written, so that run.sh can always stop it
// The test starts the server itself, because it stops and restarts it to see the page reconnect,
// and later with other configs (proof of work, a ban list), written next to CHATD_CONFIG.
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const SHOTS = path.resolve(here, '../../reports/screenshots');
const { CHATD_BIN, CHATD_CONFIG, CHATD_URL, CHATD_PIDFILE } = process.env;
const MAX_CHARS = Number(process.env.CHATD_MAX_CHARS || 2000);
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const PAGE_BUDGET = 30000; // bytes, all files of the page together

for (const [k, v] of Object.entries({ CHATD_BIN, CHATD_CONFIG, CHATD_URL })) {
  if (!v) throw new Error(`${k} is not set; run tests/e2e/run.sh`);
}

let step = 'setup';
const passed = [];
function ok(cond, what) {
  if (!cond) throw new Error(`assertion failed (${step}): ${what}`);
  passed.push(what);
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---- the server ------------------------------------------------------------------------------
let server = null;
async function startServer(config = CHATD_CONFIG) {
  const child = spawn(CHATD_BIN, ['--config', config], { stdio: ['ignore', 'inherit', 'inherit'] });
  if (CHATD_PIDFILE) fs.writeFileSync(CHATD_PIDFILE, `${child.pid}\n`);
  const exited = new Promise((r) => child.once('exit', (code, sig) => r({ code, sig })));
  exited.then(({ code, sig }) => {
    // Only stopServer() clears `server` first; any other exit is a crash.
    if (server === child) problems.push(`chatd exited by itself during "${step}" (code ${code}, signal ${sig})`);
  });
  child.exited = exited;
  server = child;
  const deadline = Date.now() + 15000;
  while (Date.now() < deadline) {
    const gone = await Promise.race([exited, sleep(100).then(() => null)]);
    if (gone) throw new Error(`chatd exited at start: ${JSON.stringify(gone)}`);
    try {
      const r = await fetch(CHATD_URL);
      if (r.ok) return;
    } catch {
      /* not listening yet */
    }
  }
  throw new Error('chatd did not answer within 15 s');
}
async function stopServer(signal = 'SIGTERM') {
  if (!server) return;
  const child = server;
  server = null;
  if (child.exitCode === null && child.signalCode === null) {
    child.kill(signal);
    const t = await Promise.race([child.exited, sleep(8000).then(() => 'timeout')]);
    if (t === 'timeout') {
      child.kill('SIGKILL');
      await child.exited;
    }
  }
}
// CHATD_CONFIG with more lines in its [safety] table, as a new file beside it.
function variant(name, lines) {
  const file = path.join(path.dirname(CHATD_CONFIG), `${name}.toml`);
  fs.writeFileSync(file, fs.readFileSync(CHATD_CONFIG, 'utf8').replace(/^\[safety\]$/m, `[safety]\n${lines}`));
  return file;
}
process.on('exit', () => {
  if (server && server.exitCode === null) server.kill('SIGKILL');
});

// ---- a TCP proxy that can take a page offline ---------------------------------------------------
// context.setOffline() leaves an open WebSocket alone, so the page whose network drops loads the
// page (and so its same-origin /ws) through this proxy. cut() resets every connection, so the
// server sees a TCP reset and no close frame, and resets new ones at once until heal().
function startProxy(port) {
  const socks = new Set();
  let down = false;
  const srv = net.createServer((c) => {
    if (down) {
      c.resetAndDestroy();
      return;
    }
    const u = net.connect(port, '127.0.0.1');
    for (const [s, other] of [
      [c, u],
      [u, c],
    ]) {
      socks.add(s);
      s.on('error', () => other.destroy());
      s.on('close', () => {
        socks.delete(s);
        other.destroy();
      });
    }
    c.pipe(u);
    u.pipe(c);
  });
  return new Promise((resolve, reject) => {
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () =>
      resolve({
        url: `http://127.0.0.1:${srv.address().port}/`,
        cut() {
          down = true;
          for (const s of socks) s.resetAndDestroy();
        },
        heal() {
          down = false;
        },
        close() {
          for (const s of socks) s.destroy();
          srv.close();
        },
      }),
    );
  });
}

// ---- page helpers ----------------------------------------------------------------------------
const problems = []; // console errors, page errors, failed requests
let outage = false; // while the server is down, failed WebSocket connections are expected
function watch(page, name) {
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    const text = m.text();
    // While the server is down, a socket that fails before it opens is expected, and so is the
    // plain GET /ws the page then sends to tell a ban (403) apart.
    if (outage && /WebSocket connection to .* failed|Failed to load resource/.test(text)) return;
    problems.push(`${name} console error during "${step}": ${text}`);
  });
  page.on('pageerror', (e) => problems.push(`${name} page error during "${step}": ${e.message}`));
  page.on('response', (r) => {
    if (r.status() >= 400 && !(outage && new URL(r.url()).pathname === '/ws')) problems.push(`${name}: HTTP ${r.status()} for ${r.url()}`);
  });
  page.on('requestfailed', (r) => {
    if (!outage) problems.push(`${name}: request failed ${r.url()}: ${r.failure()?.errorText}`);
  });
}
const status = (page) => page.locator('#status-text').textContent();
async function waitStatus(page, re, timeout = 10000) {
  try {
    await page.waitForFunction(
      ([src, flags]) => new RegExp(src, flags).test(document.getElementById('status-text').textContent),
      [re.source, re.flags],
      { timeout },
    );
  } catch {
    throw new Error(`(${step}) status never matched ${re}; it is "${await status(page)}"`);
  }
  ok(true, `status matches ${re}`);
}
async function fits375(page, what) {
  const w = await page.evaluate(() => document.documentElement.scrollWidth);
  ok(w <= 375, `no horizontal scrolling at 375 px (${what}): scrollWidth ${w}`);
}
async function shot(page, name) {
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`) });
}
const lastText = (page, who) => page.locator(`#log .msg.${who} .text`).last();
async function waitLastText(page, who, text, timeout = 5000) {
  try {
    await page.waitForFunction(
      ([w, t]) => {
        const all = document.querySelectorAll(`#log .msg.${w} .text`);
        return all.length > 0 && all[all.length - 1].textContent === t;
      },
      [who, text],
      { timeout },
    );
  } catch {
    const last = await lastText(page, who).textContent({ timeout: 1000 }).catch(() => null);
    throw new Error(`(${step}) the last "${who}" message is ${JSON.stringify(last)}, not ${JSON.stringify(text)}`);
  }
  ok(true, `message shown as ${JSON.stringify(text.slice(0, 40))}`);
}
async function waitSys(page, text, timeout = 5000) {
  try {
    await page.waitForFunction((t) => [...document.querySelectorAll('#log .sys')].some((p) => p.textContent === t), text, { timeout });
  } catch {
    throw new Error(`(${step}) the log never showed ${JSON.stringify(text)}`);
  }
  ok(true, `log shows ${JSON.stringify(text)}`);
}
// The first-visit rules notice: accepted once, before Start does anything.
async function agree(page) {
  await page.locator('#agree').click();
  await page.locator('#rules').waitFor({ state: 'hidden' });
}
// Every JSON frame of every WebSocket of a page, sent and received, in order: [{dir, t, m}].
function frames(page) {
  const all = [];
  const add = (dir) => (f) => {
    try {
      all.push({ dir, t: Date.now(), m: JSON.parse(f.payload) });
    } catch {
      /* not JSON */
    }
  };
  page.on('websocket', (ws) => {
    ws.on('framesent', add('sent'));
    ws.on('framereceived', add('got'));
  });
  return all;
}
const sentOf = (all, type) => all.filter((f) => f.dir === 'sent' && f.m.type === type).map((f) => f.m);
const gotOf = (all, type) => all.filter((f) => f.dir === 'got' && f.m.type === type).map((f) => f.m);
// SHA-256(the challenge's 16 bytes ‖ the nonce) starts with `bits` zero bits (README, proof of work).
function powValid(challenge, nonce, bits) {
  const h = crypto.createHash('sha256').update(Buffer.from(challenge, 'hex')).update(nonce, 'utf8').digest();
  return h.readUInt32BE(0) >>> 0 < 2 ** (32 - bits);
}
const texts = (page, who) => page.locator(`#log .msg.${who} .text`).allTextContents();
const noXss = (page) => page.evaluate(() => window.__xss === undefined && !document.querySelector('#log img, #log script'));

// Issue 12, "A dropped connection gets its chat back": A's network drops for 5 s in the middle of
// a chat; B sees that and goes on writing; A comes back by itself, within the server's resume
// window (20 s), and gets everything B wrote, in order.
async function resume(browser) {
  step = 'resume: pair through the proxy';
  const px = await startProxy(Number(new URL(CHATD_URL).port));
  const ctxA = await browser.newContext({ viewport: { width: 375, height: 720 }, deviceScaleFactor: 2, colorScheme: 'light' });
  const ctxB = await browser.newContext({ viewport: { width: 1100, height: 760 }, colorScheme: 'dark' });
  try {
    const a = await ctxA.newPage();
    const b = await ctxB.newPage();
    watch(a, 'A');
    watch(b, 'B');
    const sockets = []; // A's WebSockets, each with the JSON frames it sent and received
    const json = (f) => {
      try {
        return JSON.parse(f.payload);
      } catch {
        return {};
      }
    };
    a.on('websocket', (ws) => {
      const w = { sent: [], got: [] };
      sockets.push(w);
      ws.on('framesent', (f) => w.sent.push(json(f)));
      ws.on('framereceived', (f) => w.got.push(json(f)));
    });
    await Promise.all([a.goto(px.url), b.goto(CHATD_URL)]);
    for (const p of [a, b]) {
      await p.locator('#online').waitFor({ state: 'visible', timeout: 5000 });
      await agree(p);
    }
    await a.locator('#start').click();
    await b.locator('#start').click();
    await waitStatus(a, /^Chatting/);
    await waitStatus(b, /^Chatting/);
    await a.locator('#input').fill('before the drop');
    await a.keyboard.press('Enter');
    await waitLastText(b, 'them', 'before the drop');
    const held = sockets[0].got.filter((m) => m.type === 'welcome').pop()?.resume_token;
    ok(sockets.length === 1 && /^[0-9a-f]{32}$/.test(held || ''), `welcome carries a resume token (${held})`);

    step = 'resume: A offline for 5 s';
    outage = true;
    const cutAt = Date.now();
    px.cut();
    await waitStatus(a, /^Connection lost\. Reconnecting/, 5000);
    ok(await a.locator('#send').isDisabled(), 'A: Send is disabled while offline');
    await a.locator('#input').fill('typed while offline');
    await a.locator('#input').press('Enter');
    ok((await a.locator('#input').inputValue()) === 'typed while offline', 'A: a line typed offline stays in the box');
    ok(/Not connected/.test(await a.locator('#note').textContent()), 'A: the note says it was not sent');
    ok((await texts(a, 'you')).join('|') === 'before the drop', 'A: the transcript is kept and nothing was added');
    ok(!/has ended/.test(await a.locator('#log').textContent()), 'A: the chat is not declared over while it may resume');
    await waitSys(b, "Stranger's connection dropped, waiting…");
    ok(/^Chatting/.test(await status(b)), 'B: still chatting while A is away');
    for (const line of ['one while you were away', 'two while you were away']) {
      await b.locator('#input').fill(line);
      await b.keyboard.press('Enter');
      await waitLastText(b, 'you', line);
    }
    await b.waitForTimeout(300);
    ok((await b.locator('#log .msg.you.failed').count()) === 0, 'B: both lines were accepted by the server');
    await shot(a, '08-offline');
    await shot(b, '08-stranger-away-desktop-dark');
    await fits375(a, 'offline');
    const left = cutAt + 5000 - Date.now();
    ok(left > 0, `B wrote both lines while A was offline (${5000 - left} ms in)`);
    await sleep(left);

    step = 'resume: A is back';
    px.heal();
    const healAt = Date.now();
    await waitLastText(a, 'them', 'two while you were away', 12000);
    const backIn = Date.now() - healAt;
    outage = false;
    ok(backIn < 4000, `A resumed by itself ${backIn} ms after the network came back`);
    ok(Date.now() - cutAt < 20000, 'A resumed within the 20 s resume window');
    ok(
      (await texts(a, 'them')).join('|') === 'one while you were away|two while you were away',
      "A: B's lines arrived once each, in order",
    );
    ok((await texts(a, 'you')).join('|') === 'before the drop', "A: A's own line is still there");
    ok(!/has ended|Reconnected/.test(await a.locator('#log').textContent()), 'A: the same chat goes on, no new search');
    await waitStatus(a, /^Chatting/);
    await waitSys(b, 'Stranger is back');
    const re = sockets.filter((w) => w.sent[0]?.type === 'resume');
    ok(re.length === 1 && re[0].sent[0].token === held, "A's first message on the new socket is resume with the token it held");
    const resumed = re[0].got.find((m) => m.type === 'resumed');
    ok(resumed?.state === 'chatting', `the server answered resumed, state chatting (${JSON.stringify(resumed)})`);
    ok(/^[0-9a-f]{32}$/.test(resumed.resume_token) && resumed.resume_token !== held, 'resumed carries a new token');

    step = 'resume: the chat goes on';
    await a.locator('#input').fill('after the resume');
    await a.keyboard.press('Enter');
    await waitLastText(b, 'them', 'after the resume');
    await b.locator('#input').fill('welcome back');
    await b.keyboard.press('Enter');
    await waitLastText(a, 'them', 'welcome back');
    await a.waitForTimeout(300);
    await shot(a, '09-resumed');
    await shot(b, '09-stranger-back-desktop-dark');

    step = 'resume: the token is in memory only';
    const tokens = sockets.flatMap((w) => w.got).map((m) => m.resume_token).filter(Boolean);
    ok(tokens.length >= 2, `A was given ${tokens.length} tokens`);
    for (const [p, ctx] of [
      [a, ctxA],
      [b, ctxB],
    ]) {
      const kept = await p.evaluate(() => JSON.stringify([{ ...localStorage }, { ...sessionStorage }, document.cookie]));
      ok(!/[0-9a-f]{32}/.test(kept) && tokens.every((t) => !kept.includes(t)), `no token in localStorage, sessionStorage or cookies (${kept})`);
      ok((await ctx.cookies()).length === 0, 'no cookies at all');
    }
  } finally {
    await ctxA.close();
    await ctxB.close();
    px.close();
  }
}

// A page of its own: a fresh context (fresh storage), watched, its frames recorded.
async function openPage(browser, name, url = CHATD_URL, opts = {}) {
  const ctx = await browser.newContext({ viewport: { width: 375, height: 720 }, deviceScaleFactor: 2, colorScheme: 'light', ...opts });
  const page = await ctx.newPage();
  watch(page, name);
  page.f = frames(page);
  await page.goto(url);
  await page.locator('#online').waitFor({ state: 'visible', timeout: 5000 });
  await agree(page);
  return page;
}

// Issue 13, items 1, 2 and 7: Report (a reason, then a skip) during a chat and within a minute
// after one, and Block. All pages come from 127.0.0.1, and a block keeps that address from
// meeting itself, so this runs last on this server.
async function reportAndBlock(browser) {
  step = 'report: pair';
  const a = await openPage(browser, 'A');
  const b = await openPage(browser, 'B', CHATD_URL, { viewport: { width: 1100, height: 760 }, deviceScaleFactor: 1, colorScheme: 'dark' });
  const c = await openPage(browser, 'C');
  try {
    ok(await a.locator('#report').isHidden(), 'no Report button before a chat');
    await a.locator('#start').click();
    await b.locator('#start').click();
    await waitStatus(a, /^Chatting/);
    await waitStatus(b, /^Chatting/);
    ok((await a.locator('#report').isVisible()) && (await a.locator('#block').isVisible()), 'Report and Block are offered in a chat');

    step = 'report: the reason picker, by keyboard';
    await a.locator('#report').focus();
    await a.keyboard.press('Enter');
    await a.locator('#why').waitFor({ state: 'visible' });
    ok((await a.locator('#report').getAttribute('aria-expanded')) === 'true', 'Report says it is expanded');
    ok((await a.evaluate(() => document.activeElement.value)) === 'spam', 'focus moves to the first reason');
    ok((await a.locator('#why button[value]').allTextContents()).join('|') === 'Spam|Abuse|Underage|Other', 'the reasons are spam, abuse, underage, other');
    await a.waitForTimeout(200);
    await shot(a, '10-report-reasons');
    await fits375(a, 'report reasons');
    await a.keyboard.press('Escape');
    ok(await a.locator('#why').isHidden(), 'Esc closes the reasons');
    ok((await a.evaluate(() => document.activeElement.id)) === 'report', 'and focus goes back to Report');
    ok(/^Chatting/.test(await status(a)) && /^Chatting/.test(await status(b)), 'Esc in the reasons does not skip');
    ok(sentOf(a.f, 'report').length === 0, 'nothing was reported yet');
    await a.keyboard.press('Enter');
    await a.keyboard.press('Tab');
    ok((await a.evaluate(() => document.activeElement.value)) === 'abuse', 'Tab moves to the next reason');
    await a.keyboard.press('Enter');

    step = 'report: during a chat';
    await waitSys(a, 'You reported the stranger.');
    await waitStatus(a, /^Looking for a stranger/);
    await waitStatus(b, /^Stranger skipped/);
    const sentA = a.f.filter((x) => x.dir === 'sent').map((x) => x.m.type);
    ok(JSON.stringify(sentOf(a.f, 'report')) === '[{"type":"report","reason":"abuse"}]', 'A sent report with the reason abuse');
    ok(sentA.lastIndexOf('search') > sentA.indexOf('report'), 'then A searched again');
    // The page shows its line and searches as it sends the report; the answer may come after.
    await waitGot(a, 'reported', 1);
    ok(gotOf(a.f, 'reported').length === 1, 'the server answered reported');
    ok(gotOf(a.f, 'partner_left').length === 0, 'the reporter is not told partner_left');
    ok(gotOf(b.f, 'partner_left').pop()?.reason === 'next', 'the reported stranger sees a skip (partner_left next)');
    ok(!/report/i.test(await b.locator('#log').textContent()), 'and is never told of the report');
    ok(await a.locator('#report').isHidden(), 'no Report button while searching');
    await a.waitForTimeout(200);
    await shot(a, '11-reported');

    step = 'report: after the chat ended';
    ok(await b.locator('#report').isVisible(), 'Report stays after the stranger left');
    await b.locator('#report').click();
    await b.locator('#why button[value="spam"]').click();
    await waitSys(b, 'You reported the stranger.');
    await waitStatus(b, /^Looking for a stranger/);
    ok(JSON.stringify(sentOf(b.f, 'report')) === '[{"type":"report","reason":"spam"}]', 'B sent report with the reason spam');
    await waitGot(b, 'reported', 1);
    ok(gotOf(b.f, 'error').length === 0, 'the server took it without an error');

    step = 'block';
    await c.locator('#start').click();
    await waitStatus(c, /^Chatting/, 15000);
    let x = null; // the one C met
    for (const end = Date.now() + 5000; !x && Date.now() < end; await sleep(50)) {
      for (const p of [a, b]) if (/^Chatting/.test(await status(p))) x = p;
    }
    ok(x, 'C met A or B');
    const other = x === a ? b : a; // still searching: C may meet it at once
    await c.locator('#block').click();
    await waitStatus(x, /^Stranger skipped/);
    await waitGot(c, 'blocked', 1);
    await waitGot(c, 'searching', 2);
    await waitStatus(c, /^Looking for a stranger|^Chatting/);
    ok(/You blocked the stranger; you will not meet again\./.test(await c.locator('#log').textContent()), 'C is told the stranger is blocked');
    ok(sentOf(c.f, 'block').length === 1, 'C sent block');
    ok(gotOf(x.f, 'partner_left').pop()?.reason === 'next', 'the blocked stranger sees a skip (partner_left next)');
    const sentC = c.f.filter((f) => f.dir === 'sent').map((f) => f.m.type);
    ok(sentC.lastIndexOf('search') > sentC.indexOf('block'), 'then C searched again');
    if (/^Chatting/.test(await status(c))) await waitStatus(other, /^Chatting/); // C met the other one
    await c.waitForTimeout(200);
    await shot(c, '12-blocked');
    await fits375(c, 'blocked');
  } finally {
    for (const p of [a, b, c]) await p.context().close();
  }
}

// Waits until a page has received at least n messages of a type.
async function waitGot(page, type, n, timeout = 5000) {
  const end = Date.now() + timeout;
  while (gotOf(page.f, type).length < n) {
    if (Date.now() > end) throw new Error(`(${step}) never received ${n} ${type}; got ${JSON.stringify(page.f.map((f) => f.m.type))}`);
    await sleep(50);
  }
  ok(true, `received ${type}`);
}

// Issue 13, item 6: with [safety] pow_bits = 16, every search carries a solved challenge. The
// page solves each in pow.js as soon as it arrives, and solves again when the server refuses one.
async function proofOfWork(browser) {
  step = 'proof of work: restart with pow_bits = 16';
  const BITS = 16;
  await stopServer();
  await startServer(variant('pow', `pow_bits = ${BITS}`));
  // A's searches pass through a route that drops the first one's nonce and spoils the second's,
  // to see the page answer pow_required and pow_invalid.
  const ctxA = await browser.newContext({ viewport: { width: 375, height: 720 }, deviceScaleFactor: 2, colorScheme: 'light' });
  const a = await ctxA.newPage();
  watch(a, 'A');
  const fa = [];
  let searches = 0;
  await a.routeWebSocket(/\/ws$/, (ws) => {
    const server = ws.connectToServer();
    ws.onMessage((text) => {
      const m = JSON.parse(text);
      fa.push({ dir: 'sent', t: Date.now(), m: { ...m } });
      if (m.type === 'search') {
        searches += 1;
        if (searches === 1) delete m.pow;
        if (searches === 2) m.pow = 'x';
      }
      server.send(JSON.stringify(m));
    });
    server.onMessage((text) => {
      fa.push({ dir: 'got', t: Date.now(), m: JSON.parse(text) });
      ws.send(text);
    });
  });
  a.f = fa;
  await a.goto(CHATD_URL);
  await a.locator('#online').waitFor({ state: 'visible', timeout: 5000 });
  await agree(a);
  const b = await openPage(browser, 'B', CHATD_URL, { viewport: { width: 1100, height: 760 }, deviceScaleFactor: 1, colorScheme: 'dark' });
  try {
    const w = gotOf(fa, 'welcome')[0];
    ok(/^[0-9a-f]{32}$/i.test(w?.pow?.challenge) && w.pow.bits === BITS, `welcome carries a challenge (${JSON.stringify(w?.pow)})`);

    step = 'proof of work: refused, solved again, accepted';
    await a.waitForTimeout(500); // time to solve the welcome's challenge
    ok(a.workers().length === 1, "the page solves the welcome's challenge before Start is pressed");
    // When Start was pressed, by the page's clock (the same clock as the route's, in this process).
    await a.evaluate(() => document.getElementById('start').addEventListener('click', () => (window.__clickAt = Date.now()), true));
    await a.locator('#start').click();
    await waitStatus(a, /^Looking for/);
    await waitGot(a, 'searching', 1, 10000);
    const errs = gotOf(fa, 'error');
    ok(errs.map((e) => e.code).join() === 'pow_required,pow_invalid', `the server refused the two spoiled searches (${JSON.stringify(errs)})`);
    ok(errs.every((e) => /^[0-9a-f]{32}$/i.test(e.pow?.challenge)), 'each refusal carries a challenge');
    const aSearches = sentOf(fa, 'search');
    ok(aSearches.length === 3, `A searched three times (${JSON.stringify(aSearches)})`);
    ok(powValid(errs[1].pow.challenge, aSearches[2].pow, BITS), "A's third search answers the last refusal's challenge");
    ok((await a.locator('#note').textContent()) === '', 'the refusals are not shown to the person');
    const firstSent = fa.find((f) => f.dir === 'sent' && f.m.type === 'search').t - (await a.evaluate(() => window.__clickAt));
    console.log(`e2e: proof of work: from Start to the search on the wire: ${firstSent} ms (the challenge was solved before)`);

    await b.locator('#start').click();
    await waitStatus(a, /^Chatting/);
    await waitStatus(b, /^Chatting/);
    await a.locator('#input').fill('solved and matched');
    await a.keyboard.press('Enter');
    await waitLastText(b, 'them', 'solved and matched');
    await b.locator('#input').fill('and chatting');
    await b.keyboard.press('Enter');
    await waitLastText(a, 'them', 'and chatting');

    step = 'proof of work: a skip is a search too';
    await b.locator('#input').focus();
    await b.keyboard.press('Escape');
    await b.keyboard.press('Escape');
    await waitStatus(b, /^Looking for/);
    await waitStatus(a, /^Stranger skipped/);
    await waitGot(b, 'searching', 2);
    // Each search answers the challenge that came before it: the welcome's, then the last searching's.
    const challenges = b.f.filter((f) => f.dir === 'got' && (f.m.type === 'welcome' || f.m.type === 'searching')).map((f) => f.m.pow?.challenge);
    const nonces = sentOf(b.f, 'search').map((m) => m.pow);
    ok(nonces.length === 2 && nonces.every((n) => /^\d+$/.test(n)), `B's two searches carry decimal nonces (${nonces})`);
    ok(nonces.every((n, i) => powValid(challenges[i], n, BITS)), "each of B's nonces solves its challenge with 16 zero bits");
    ok(gotOf(b.f, 'error').length === 0, 'B was never refused');

    // Timed at the bits "auto" asks for (pow_bits is off by default; "auto" turns 18 on).
    step = 'proof of work: solve time';
    const TIMED = 18;
    const runs = await a.evaluate(async (bits) => {
      const worker = new Worker('pow.js');
      const out = [];
      for (let i = 0; i < 20; i += 1) {
        const c = [...crypto.getRandomValues(new Uint8Array(16))].map((x) => x.toString(16).padStart(2, '0')).join('');
        const t = performance.now();
        const n = await new Promise((r) => {
          worker.onmessage = (e) => r(e.data.n);
          worker.postMessage({ c, b: bits });
        });
        out.push({ c, n, ms: performance.now() - t });
      }
      worker.terminate();
      return out;
    }, TIMED);
    ok(runs.every((r) => powValid(r.c, r.n, TIMED)), 'the worker solved 20 random challenges correctly');
    const ms = runs.map((r) => r.ms).sort((x, y) => x - y);
    const median = (ms[9] + ms[10]) / 2;
    console.log(
      `e2e: proof of work: median solve time at ${TIMED} bits over ${ms.length} solves in Chromium: ${median.toFixed(1)} ms ` +
        `(min ${ms[0].toFixed(1)}, max ${ms[ms.length - 1].toFixed(1)})`,
    );
  } finally {
    await ctxA.close();
    await b.context().close();
  }
}

// Issue 13, item 5: an address on the ban list gets 403 at /ws, and the page says so and stops.
async function banned(browser) {
  step = 'banned: restart with a ban list';
  await stopServer();
  const list = path.join(path.dirname(CHATD_CONFIG), 'banned.txt');
  fs.writeFileSync(list, '# every page of the test comes from here\n127.0.0.1\n');
  await startServer(variant('ban', `ban_file = ${JSON.stringify(list)}`));
  const ctx = await browser.newContext({ viewport: { width: 375, height: 720 }, deviceScaleFactor: 2, colorScheme: 'light' });
  try {
    const p = await ctx.newPage(); // not watched: the 403s are what this checks
    let sockets = 0;
    p.on('websocket', () => (sockets += 1));
    await p.goto(CHATD_URL);
    await waitStatus(p, /^chatd is not available to you\.$/);
    ok(await p.locator('#start').isHidden(), 'nothing to start');
    await p.waitForTimeout(3000);
    ok(sockets === 1, `the page stopped after one refused WebSocket (${sockets})`);
    ok(/not available/.test(await status(p)), 'and still says so');
    await shot(p, '13-banned');
    await fits375(p, 'banned');
  } finally {
    await ctx.close();
  }
}

// ---- the test --------------------------------------------------------------------------------
async function main() {
  fs.mkdirSync(SHOTS, { recursive: true });
  for (const f of fs.readdirSync(SHOTS)) if (f.endsWith('.png')) fs.unlinkSync(path.join(SHOTS, f));

  step = 'start server';
  await startServer();

  step = 'page weight';
  const doc = await fetch(CHATD_URL);
  const html = await doc.text();
  const csp = doc.headers.get('content-security-policy') || '';
  ok(/default-src 'none'/.test(csp) && /script-src 'self'/.test(csp), `the page is served with a strict CSP (${csp})`);
  let bytes = Buffer.byteLength(html);
  for (const f of ['app.js', 'pow.js', 'style.css', 'favicon.svg']) {
    const r = await fetch(new URL(f, CHATD_URL));
    ok(r.ok, `${f} is served`);
    bytes += (await r.arrayBuffer()).byteLength;
  }
  ok(bytes < PAGE_BUDGET, `whole page is under ${PAGE_BUDGET} bytes (${bytes})`);

  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  try {
    // A: a 375 px phone, light. B: a desktop, dark. Separate contexts: separate storage.
    const ctxA = await browser.newContext({ viewport: { width: 375, height: 720 }, deviceScaleFactor: 2, colorScheme: 'light' });
    const ctxB = await browser.newContext({ viewport: { width: 1100, height: 760 }, colorScheme: 'dark' });
    const a = await ctxA.newPage();
    const b = await ctxB.newPage();
    watch(a, 'A');
    watch(b, 'B');
    const fa = frames(a);

    step = 'open';
    await Promise.all([a.goto(CHATD_URL), b.goto(CHATD_URL)]);
    for (const p of [a, b]) {
      await p.locator('#online').waitFor({ state: 'visible', timeout: 5000 });
      ok(/\d+ online/.test(await p.locator('#online').textContent()), 'online count shown after welcome');
      ok((await p.locator('#counter').textContent()).replace(/,/g, '') === `0 / ${MAX_CHARS}`, `counter shows the limit from welcome (${MAX_CHARS})`);
    }
    ok((await a.locator('#log').getAttribute('aria-live')) === 'polite', 'the log is an aria-live=polite region');
    ok((await a.locator('#log').getAttribute('role')) === 'log', 'the log has role=log');
    ok(await a.evaluate(() => !!document.querySelector('link[rel="icon"][href="favicon.svg"]')), 'favicon linked');
    await a.waitForTimeout(300);
    await shot(a, '01-start');
    await shot(b, '01-start-desktop-dark');
    await fits375(a, 'start');

    step = 'rules notice';
    for (const p of [a, b]) ok(await p.locator('#rules').isVisible(), 'the rules are shown on the first visit');
    const rules = await a.locator('#rules').textContent();
    ok(
      /18 or older/.test(rules) && /13 or older with a parent's permission/.test(rules) && /kind/.test(rules) && /report/.test(rules),
      'the rules say 18+, or 13+ with a parent\'s permission, be kind, and that reports lead to bans',
    );
    await a.locator('#start').click();
    await a.waitForTimeout(300);
    ok(await a.evaluate(() => document.body.classList.contains('s-idle')), 'Start does not search before the rules are accepted');
    ok(sentOf(fa, 'search').length === 0, 'no search was sent before the rules are accepted');
    ok((await a.evaluate(() => document.activeElement.id)) === 'agree', 'Start moves focus to "I agree" instead');
    await agree(a);
    ok((await a.evaluate(() => document.activeElement.id)) === 'start', 'after "I agree" focus is on Start');

    step = 'keyboard focus is visible';
    await a.locator('body').focus();
    let focused = '';
    for (let i = 0; i < 8 && focused !== 'start'; i += 1) {
      await a.keyboard.press('Tab');
      focused = await a.evaluate(() => document.activeElement && document.activeElement.id);
    }
    ok(focused === 'start', 'Start is reachable with Tab');
    const outline = await a.evaluate(() => {
      const s = getComputedStyle(document.activeElement);
      return `${s.outlineStyle} ${s.outlineWidth}`;
    });
    ok(!/^none/.test(outline) && !/ 0px$/.test(outline), `focused button has a visible outline (${outline})`);

    step = 'interests are checked';
    await a.locator('#interests').fill('a, b, c, d, e, f');
    await a.locator('#start').click();
    ok(/At most 5/.test(await a.locator('#interests-hint').textContent()), 'more than 5 interests are refused on the page');
    ok(await a.evaluate(() => document.body.classList.contains('s-idle')), 'no search starts with bad interests');
    ok((await a.evaluate(() => document.activeElement.id)) === 'interests', 'focus goes to the interests field');

    step = 'interests are remembered';
    await a.locator('#interests').fill('Music, chess');
    await a.locator('#start').click();
    await waitStatus(a, /Looking for a stranger/);
    ok(/Looking for someone who likes music or chess/.test(await a.locator('#log').textContent()), 'log names the interests searched for');
    await a.waitForTimeout(200);
    await shot(a, '02-searching');
    await fits375(a, 'searching');
    ok((await a.locator('#next').textContent()) === 'Stop', 'while searching the button is Stop');
    await a.locator('#next').click(); // leave: cancel the search
    await a.locator('#start').waitFor({ state: 'visible' });
    await a.reload();
    await a.locator('#online').waitFor({ state: 'visible', timeout: 5000 });
    ok((await a.locator('#interests').inputValue()) === 'Music, chess', 'interests field restored from localStorage after reload');
    ok(await a.locator('#rules').isHidden(), 'the rules are not shown again after a reload');

    step = 'pairing';
    await a.locator('#start').click();
    await waitStatus(a, /Looking for/);
    // B uses only the keyboard: Tab to "I agree" and Enter, Tab to the interests field, type, Enter submits.
    await b.locator('body').focus();
    for (let i = 0; i < 8 && (await b.evaluate(() => document.activeElement.id)) !== 'agree'; i += 1) await b.keyboard.press('Tab');
    ok((await b.evaluate(() => document.activeElement.id)) === 'agree', '"I agree" is reachable with Tab');
    await b.keyboard.press('Enter');
    await b.locator('#rules').waitFor({ state: 'hidden' });
    ok((await b.evaluate(() => document.activeElement.id)) === 'start', 'Enter on "I agree" accepts the rules');
    await b.locator('body').focus();
    for (let i = 0; i < 8; i += 1) {
      await b.keyboard.press('Tab');
      if ((await b.evaluate(() => document.activeElement.id)) === 'interests') break;
    }
    ok((await b.evaluate(() => document.activeElement.id)) === 'interests', 'interests field reachable with Tab');
    await b.keyboard.type('music');
    await b.keyboard.press('Enter');
    await waitStatus(a, /Chatting · you both like music/);
    await waitStatus(b, /Chatting · you both like music/);
    ok((await b.evaluate(() => document.activeElement.id)) === 'input', 'focus moves to the message box when matched');
    ok(/You both like/.test(await a.locator('#log').textContent()), 'log says what the two share');

    step = 'messages both ways';
    await a.locator('#input').click();
    await a.keyboard.type('Hello from A');
    await a.keyboard.press('Enter');
    await waitLastText(b, 'them', 'Hello from A');
    ok((await lastText(a, 'you').textContent()) === 'Hello from A', 'own message rendered locally as You');
    ok((await a.locator('#input').inputValue()) === '', 'input cleared after send');
    ok((await b.locator('#log .msg.them .who').last().textContent()) === 'Stranger', 'received message labelled Stranger');
    await b.keyboard.type('Hi A!');
    await b.keyboard.press('Shift+Enter');
    await b.keyboard.type('second line');
    await b.keyboard.press('Enter');
    await waitLastText(a, 'them', 'Hi A!\nsecond line');
    ok(true, 'Shift+Enter makes a new line, Enter sends');
    ok((await a.locator('#log .msg.you').count()) === 1, 'no echo of own message');
    await b.locator('#send').click();
    ok((await a.locator('#log .msg.them').count()) === 1, 'Send with an empty box sends nothing');

    step = 'typing indicator';
    ok(await a.locator('#typing').isHidden(), 'no typing indicator before typing');
    await b.locator('#input').focus();
    await b.keyboard.type('I am typ', { delay: 40 });
    await a.locator('#typing').waitFor({ state: 'visible', timeout: 3000 });
    ok((await a.locator('#typing').textContent()) === 'Stranger is typing…', 'typing indicator shown on the other page');
    await shot(a, '04-typing');
    await fits375(a, 'typing');
    await a.locator('#typing').waitFor({ state: 'hidden', timeout: 7000 });
    ok(true, 'typing indicator clears after the stranger stops typing');
    await b.keyboard.type('ing');
    await a.locator('#typing').waitFor({ state: 'visible', timeout: 3000 });
    await b.keyboard.press('Enter');
    await waitLastText(a, 'them', 'I am typing');
    ok(await a.locator('#typing').isHidden(), 'typing indicator clears when the stranger sends');

    step = 'html is shown as text';
    const evil = '<img src=x onerror="window.__xss=1"> <b>bold?</b> https://example.com';
    await b.locator('#input').fill(evil);
    await b.keyboard.press('Enter');
    await waitLastText(a, 'them', evil);
    await a.waitForTimeout(300);
    ok(await noXss(a), 'markup in a received message is literal text; window.__xss stays undefined');
    ok(await noXss(b), 'markup in a sent message is literal text on the sender too');
    ok((await a.locator('#log a').count()) === 0, 'links are not auto-linked');

    step = 'long words wrap';
    const long = 'x'.repeat(120);
    await b.locator('#input').fill(long);
    await b.keyboard.press('Enter');
    await waitLastText(a, 'them', long);
    await fits375(a, 'a 120-character word');

    step = 'character limit';
    await a.locator('#input').fill('y'.repeat(MAX_CHARS + 1));
    ok(
      (await a.locator('#counter').textContent()).replace(/,/g, '') === `${MAX_CHARS + 1} / ${MAX_CHARS}`,
      'counter counts characters',
    );
    ok(await a.locator('#counter').evaluate((e) => e.classList.contains('over')), 'counter marks an over-long message');
    ok(await a.locator('#send').isDisabled(), 'Send disabled over the limit');
    await a.locator('#input').fill('😀😀😀');
    ok((await a.locator('#counter').textContent()).replace(/,/g, '') === `3 / ${MAX_CHARS}`, 'counter counts characters, not UTF-16 units');
    await a.locator('#input').fill('');
    await a.keyboard.type('Nice to meet you. Where are you from?');
    await a.keyboard.press('Enter');
    await waitLastText(b, 'them', 'Nice to meet you. Where are you from?');
    await a.waitForTimeout(300);
    await shot(a, '03-chatting');
    await shot(b, '03-chatting-desktop-dark');
    await fits375(a, 'chatting');

    step = 'Esc Esc skips';
    await b.locator('#input').focus();
    await b.keyboard.press('Escape');
    ok((await b.locator('#next').textContent()) === 'Really?', 'first Esc asks "Really?"');
    ok(/Chatting/.test(await status(a)), 'one Esc does not end the chat');
    await b.keyboard.press('Escape');
    await waitStatus(b, /Looking for/);
    await waitStatus(a, /Stranger skipped/);
    ok(/Stranger skipped/.test(await a.locator('#log').textContent()), 'the log tells the other page the stranger skipped');
    ok(await a.locator('#typing').isHidden(), 'no typing indicator after the stranger left');
    ok((await a.locator('#start').textContent()) === 'New chat', 'after a chat the button offers a new chat');
    await a.waitForTimeout(200);
    await shot(a, '05-stranger-left');
    await fits375(a, 'stranger left');

    step = 'server restart';
    // A searches again. B is searching too, but the two just parted, so a server with a rematch
    // cooldown keeps them apart: either way each page is searching or chatting when the server goes.
    await a.locator('#start').click();
    await waitStatus(a, /Looking for|Chatting/);
    outage = true;
    await stopServer();
    await waitStatus(a, /Reconnecting in \d+ s/, 10000);
    await waitStatus(b, /Reconnecting in \d+ s/, 10000);
    await a.waitForTimeout(300);
    await shot(a, '06-reconnecting');
    await shot(b, '06-reconnecting-desktop-dark');
    await fits375(a, 'reconnecting');

    step = 'reconnect resumes the search';
    await startServer();
    await waitStatus(a, /Chatting/, 45000);
    await waitStatus(b, /Chatting/, 45000);
    outage = false;
    ok(true, 'both pages reconnected by themselves and, having been searching, were paired again');

    step = 'connection lost mid-chat';
    outage = true;
    await stopServer('SIGKILL'); // no close frame: the sockets just drop
    await waitStatus(a, /Connection lost\. Reconnecting in \d+ s/, 10000);
    await waitStatus(b, /Connection lost\. Reconnecting in \d+ s/, 10000);
    ok(/You're now chatting/.test(await a.locator('#log').textContent()), 'the transcript stays while reconnecting');
    ok(await a.locator('#send').isDisabled(), 'Send is disabled while the connection is down');
    await a.waitForTimeout(200);
    await shot(a, '07-connection-lost');
    await fits375(a, 'connection lost');
    await startServer();
    await waitStatus(a, /Chatting/, 45000);
    await waitStatus(b, /Chatting/, 45000);
    outage = false;
    // The new server process never saw the old sessions: the resume fails and the chat is over.
    ok(/Connection lost\. The chat has ended\./.test(await a.locator('#log').textContent()), 'the log says the chat ended with the connection');
    ok(/Reconnected\. Looking for a stranger/.test(await a.locator('#log').textContent()), 'the log says it reconnected and is looking again');

    step = 'New chat button twice skips';
    await a.locator('#next').click();
    ok((await a.locator('#next').textContent()) === 'Really?', 'first click asks "Really?"');
    await a.locator('#next').click();
    await waitStatus(b, /Stranger skipped/);
    await waitStatus(a, /Looking for/);

    step = 'final checks';
    ok(await noXss(a), 'window.__xss still undefined on A');
    ok(await noXss(b), 'window.__xss still undefined on B');
    await ctxA.close();
    await ctxB.close();

    await resume(browser);
    await reportAndBlock(browser);
    await proofOfWork(browser);
    await banned(browser);
  } finally {
    await browser.close();
  }
  step = 'console';
  ok(problems.length === 0, `no console errors, page errors or failed requests:\n  ${problems.join('\n  ')}`);
}

const timer = setTimeout(() => {
  console.error(`e2e: FAILED: timed out during "${step}"`);
  process.exit(1);
}, 240000);
try {
  await main();
  console.log(`e2e: ${passed.length} checks passed; screenshots in ${SHOTS}`);
  await stopServer();
  clearTimeout(timer);
  process.exit(0);
} catch (e) {
  console.error(`e2e: FAILED during "${step}": ${e.message}`);
  if (problems.length) console.error(`also seen:\n  ${problems.join('\n  ')}`);
  await stopServer();
  process.exit(1);
}
