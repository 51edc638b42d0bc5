// End-to-end test of the chatd page in a real headless Chromium, driven by playwright-core.
//
// Run it through ./run.sh, which builds chatd, writes a config and sets:
//   CHATD_BIN     the chatd binary
//   CHATD_CONFIG  its config file (listen = "127.0.0.1:PORT")
//   CHATD_URL     http://127.0.0.1:PORT/
//   CHATD_PIDFILE where the server's pid is written, so that run.sh can always stop it
// The test starts the server itself, because it stops and restarts it to see the page reconnect.
import { spawn } from 'node:child_process';
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
async function startServer() {
  const child = spawn(CHATD_BIN, ['--config', CHATD_CONFIG], { stdio: ['ignore', 'inherit', 'inherit'] });
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
    if (outage && /WebSocket connection to .* failed/.test(text)) return;
    problems.push(`${name} console error during "${step}": ${text}`);
  });
  page.on('pageerror', (e) => problems.push(`${name} page error during "${step}": ${e.message}`));
  page.on('response', (r) => {
    if (r.status() >= 400) problems.push(`${name}: HTTP ${r.status()} for ${r.url()}`);
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
    for (const p of [a, b]) await p.locator('#online').waitFor({ state: 'visible', timeout: 5000 });
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
  for (const f of ['app.js', 'style.css', 'favicon.svg']) {
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

    step = 'pairing';
    await a.locator('#start').click();
    await waitStatus(a, /Looking for/);
    // B uses only the keyboard: Tab to the interests field, type, Enter submits.
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
