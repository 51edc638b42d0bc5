// chatd: the page. Plain script, no dependencies. Everything received is rendered with
// textContent, never as HTML.
'use strict';
(() => {
  const $ = (id) => document.getElementById(id);
  const body = document.body;
  const log = $('log');
  const statusEl = $('status-text');
  const retry = $('retry');
  const typingEl = $('typing');
  const sr = $('sr');
  const panel = $('panel');
  const startForm = $('start-form');
  const startBtn = $('start');
  const interestsIn = $('interests');
  const hint = $('interests-hint');
  const hintText = hint.textContent;
  const composer = $('composer');
  const input = $('input');
  const sendBtn = $('send');
  const nextBtn = $('next');
  const note = $('note');
  const counter = $('counter');
  const online = $('online');
  const onlineN = $('online-n');

  const KEY = 'chatd.interests';
  const TYPING_IDLE = 3000; // send typing:false after this long without a keystroke
  const PEER_TYPING_TTL = 45000; // a safety net: hide the stranger's indicator after this long
  const CONFIRM_MS = 3000; // "Really?" waits this long for the second press
  const TITLE = document.title;

  let ws = null;
  let conn = 'connecting'; // connecting | open | off
  let everOpen = false;
  let mode = 'idle'; // idle | searching | chatting | ended
  let paused = false; // a cluster node cannot reach the shared queue: searches wait
  let endText = '';
  let common = [];
  let myInterests = [];
  let maxChars = 2000;
  let attempt = 0;
  let retryTimer = 0;
  let tickTimer = 0;
  let retryAt = 0;
  let closeNote = '';
  let armed = false;
  let armTimer = 0;
  let typingOn = false;
  let quietUntil = 0; // no typing events until then, after a rate_limited error
  let typingTimer = 0;
  let peerTimer = 0;
  let announced = false;
  let lastWho = '';
  let lastOut = null; // {type, t, el}
  let noteTimer = 0;
  let unread = 0;
  let wasLost = false;
  let tok = ''; // resume token, memory only
  let resuming = false;

  const list = (items, type) => {
    try {
      return new Intl.ListFormat('en', { type }).format(items);
    } catch (e) {
      return items.join(', ');
    }
  };
  const store = (v) => {
    try {
      if (v === undefined) return localStorage.getItem(KEY) || '';
      localStorage.setItem(KEY, v);
    } catch (e) {
      /* storage may be disabled */
    }
    return '';
  };

  // ---- rendering -------------------------------------------------------------------------

  function statusLine() {
    if (conn !== 'open' && attempt > 0) {
      const lead = closeNote || (everOpen ? 'Connection lost.' : 'Cannot reach the server.');
      if (conn === 'off') {
        const s = Math.max(1, Math.ceil((retryAt - Date.now()) / 1000));
        return `${lead} Reconnecting in ${s} s…`;
      }
      return `${lead} Reconnecting…`;
    }
    if (conn === 'connecting') return 'Connecting…';
    if (mode === 'searching' && paused) return 'Matching is paused while the service reconnects. You keep your place…';
    if (mode === 'searching') return 'Looking for a stranger…';
    if (mode === 'chatting') {
      return common.length ? `Chatting · you both like ${list(common, 'conjunction')}` : 'Chatting with a random stranger';
    }
    if (mode === 'ended') return endText;
    return 'Ready';
  }

  function render() {
    const lost = conn !== 'open' && attempt > 0;
    body.className = `s-${mode}${lost ? ' c-off' : ''}`;
    statusEl.textContent = statusLine();
    retry.hidden = conn !== 'off';
    const chatting = mode === 'chatting';
    nextBtn.textContent = mode === 'searching' ? 'Stop' : armed ? 'Really?' : 'New chat';
    nextBtn.classList.toggle('armed', armed);
    nextBtn.title = chatting ? 'Esc' : '';
    input.readOnly = !chatting;
    input.placeholder = chatting ? 'Message' : 'Waiting…';
    startBtn.textContent = mode === 'ended' ? 'New chat' : 'Start';
    updateCounter();
  }

  function updateCounter() {
    const n = [...input.value].length;
    counter.textContent = `${n.toLocaleString('en')} / ${maxChars.toLocaleString('en')}`;
    counter.classList.toggle('over', n > maxChars);
    sendBtn.disabled = mode !== 'chatting' || conn !== 'open' || n > maxChars;
  }

  const nearBottom = () => log.scrollHeight - log.scrollTop - log.clientHeight < 48;
  const toBottom = () => {
    log.scrollTop = log.scrollHeight;
  };

  // parts: strings, or [string] for a bold part
  function sys(parts, cls) {
    const stick = nearBottom();
    const p = document.createElement('p');
    p.className = cls ? `sys ${cls}` : 'sys';
    for (const part of [].concat(parts)) {
      if (Array.isArray(part)) {
        const b = document.createElement('b');
        b.textContent = part[0];
        p.append(b);
      } else {
        p.append(document.createTextNode(part));
      }
    }
    log.append(p);
    lastWho = '';
    if (stick) toBottom();
  }

  function addMsg(who, text) {
    const stick = nearBottom();
    const row = document.createElement('div');
    row.className = `msg ${who}${lastWho === who ? ' cont' : ''}`;
    const label = document.createElement('span');
    label.className = 'who';
    label.textContent = who === 'you' ? 'You' : 'Stranger';
    const t = document.createElement('p');
    t.className = 'text';
    t.dir = 'auto';
    t.textContent = text;
    row.append(label, t);
    log.append(row);
    lastWho = who;
    if (stick || who === 'you') toBottom();
    return row;
  }

  function showNote(text) {
    note.textContent = text;
    clearTimeout(noteTimer);
    noteTimer = setTimeout(() => {
      note.textContent = '';
    }, 6000);
  }

  function announce(text) {
    sr.textContent = '';
    setTimeout(() => {
      sr.textContent = text;
    }, 60);
  }

  function setOnline(n) {
    if (typeof n !== 'number' || !(n >= 0)) return;
    online.hidden = false;
    onlineN.textContent = `${n.toLocaleString('en')} online`;
  }

  function attention() {
    if (!document.hidden) return;
    unread += 1;
    document.title = `(${unread}) ${TITLE}`;
  }

  // ---- the stranger's typing indicator ----------------------------------------------------

  function peerTyping(on) {
    const stick = nearBottom();
    clearTimeout(peerTimer);
    typingEl.hidden = !on;
    if (on) {
      peerTimer = setTimeout(() => peerTyping(false), PEER_TYPING_TTL);
      if (!announced) {
        announced = true;
        announce('Stranger is typing');
      }
    }
    if (stick) toBottom();
  }

  // ---- our typing events -----------------------------------------------------------------

  function typingOff(send) {
    clearTimeout(typingTimer);
    if (typingOn && send) out({ type: 'typing', active: false });
    typingOn = false;
  }

  function onInput() {
    updateCounter();
    disarm();
    if (mode !== 'chatting') return;
    if (!input.value.trim()) {
      typingOff(true);
      return;
    }
    if (!typingOn && Date.now() > quietUntil && out({ type: 'typing', active: true })) typingOn = true;
    clearTimeout(typingTimer);
    typingTimer = setTimeout(() => typingOff(true), TYPING_IDLE);
  }

  // ---- socket ----------------------------------------------------------------------------

  function out(msg) {
    if (!ws || ws.readyState !== 1) return false;
    ws.send(JSON.stringify(msg));
    lastOut = { type: msg.type, t: Date.now(), el: null };
    return true;
  }

  function connect() {
    clearTimeout(retryTimer);
    clearInterval(tickTimer);
    if (ws) return;
    conn = 'connecting';
    render();
    const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
    let s;
    try {
      s = new WebSocket(url);
    } catch (e) {
      lost(0);
      return;
    }
    ws = s;
    s.onopen = () => {
      if (ws !== s) return;
      conn = 'open';
      everOpen = true;
      attempt = 0;
      closeNote = '';
      resuming = tok && out({ type: 'resume', token: tok });
      render();
    };
    s.onmessage = (e) => {
      if (ws === s && typeof e.data === 'string') onFrame(e.data);
    };
    s.onclose = (e) => {
      if (ws !== s) return;
      ws = null;
      lost(e.code);
    };
  }

  function lost(code) {
    conn = 'off';
    wasLost = true;
    if (code !== 1006) tok = ''; // closed: no resume
    online.hidden = true;
    typingOff(false);
    peerTyping(false);
    disarm();
    if (code === 1001) closeNote = 'The server is restarting.';
    else if (code === 1008) closeNote = 'The server closed the connection: too many messages.';
    else closeNote = '';
    if (!tok) drop();
    if (code === 1008) {
      if (mode === 'searching') mode = 'ended';
      endText = closeNote;
      attempt = Math.max(attempt, 4);
    }
    const base = Math.min(tok && attempt < 20 ? 2000 : 30000, 1000 * 2 ** attempt);
    const delay = Math.max(1000, base / 2 + (Math.random() * base) / 2);
    attempt += 1;
    retryAt = Date.now() + delay;
    retryTimer = setTimeout(connect, delay);
    tickTimer = setInterval(render, 1000);
    render();
  }

  function drop() {
    if (mode !== 'chatting') return;
    sys('Connection lost. The chat has ended.', 'end');
    mode = 'searching'; // look again once back
  }

  // back online; keep: resumed
  function back(keep) {
    resuming = false;
    if (!keep) {
      drop();
      if (mode === 'searching') {
        sendSearch();
        if (wasLost) sys('Reconnected. Looking for a stranger…');
      }
    }
    wasLost = false;
    render();
  }

  function onFrame(data) {
    let m;
    try {
      m = JSON.parse(data);
    } catch (e) {
      return;
    }
    if (!m || typeof m !== 'object') return;
    switch (m.type) {
      case 'welcome':
        paused = false;
        if (Number.isInteger(m.max_message_chars) && m.max_message_chars > 0) maxChars = m.max_message_chars;
        setOnline(m.online);
        tok = m.resume_token;
        if (!resuming) back();
        break;
      case 'resumed':
        tok = m.resume_token;
        back(m.state === mode);
        break;
      case 'partner_away':
      case 'partner_back':
        if (mode === 'chatting') sys(m.type === 'partner_back' ? 'Stranger is back' : "Stranger's connection dropped, waiting…");
        break;
      case 'online':
        setOnline(m.count);
        break;
      case 'matched':
        paused = false;
        if (mode === 'searching') matched(Array.isArray(m.common_interests) ? m.common_interests : []);
        break;
      case 'message':
        if (mode === 'chatting' && typeof m.text === 'string') {
          peerTyping(false);
          addMsg('them', m.text);
          attention();
        }
        break;
      case 'typing':
        if (mode === 'chatting') peerTyping(m.active === true);
        break;
      case 'partner_left':
        if (mode === 'chatting') partnerLeft(m.reason);
        break;
      case 'matching':
        paused = m.available === false;
        render();
        break;
      case 'error':
        if (resuming) back(); // resume_failed (old server: unknown_type)
        else onError(String(m.code || ''));
        break;
      default:
    }
  }

  const LEFT = {
    next: 'Stranger skipped to a new chat.',
    left: 'Stranger has left the chat.',
    disconnected: 'Stranger has disconnected.',
    shutdown: 'The server is restarting, so the chat has ended.',
  };

  function partnerLeft(reason) {
    if (reason === 'shutdown') {
      // The server is about to close the socket; look again once it is back, as after a drop.
      typingOff(false);
      peerTyping(false);
      disarm();
      sys(LEFT.shutdown, 'end');
      mode = 'searching';
      sendSearch();
      render();
      return;
    }
    endChat(LEFT[reason] || 'The chat has ended.');
    attention();
  }

  function endChat(text) {
    const hadFocus = composer.contains(document.activeElement);
    mode = 'ended';
    endText = text;
    typingOff(false);
    peerTyping(false);
    disarm();
    sys(text, 'end');
    render();
    // The composer is gone now; park focus on the panel, not on a button a stray Enter would press.
    if (hadFocus) panel.focus();
  }

  function matched(shared) {
    mode = 'chatting';
    common = shared.filter((s) => typeof s === 'string' && s);
    announced = false;
    if (common.length) {
      sys(["You're now chatting with a stranger. You both like ", [list(common, 'conjunction')], '.']);
    } else if (myInterests.length) {
      sys("You're now chatting with a random stranger; nobody shared your interests. Say hi!");
    } else {
      sys("You're now chatting with a random stranger. Say hi!");
    }
    render();
    input.focus();
    attention();
  }

  const ERRORS = {
    rate_limited: 'You are sending too fast; that was dropped.',
    message_too_long: 'That message is too long.',
    empty_message: 'Empty messages are not sent.',
    not_in_chat: 'Not delivered: the chat had already ended.',
    bad_interests: 'Each interest must be 1 to 32 characters, at most 5 of them.',
  };

  function onError(code) {
    if (code === 'bad_interests') {
      if (mode === 'searching') {
        mode = 'idle';
        log.textContent = '';
        render();
      }
      badInterests(ERRORS.bad_interests);
      return;
    }
    if (code === 'rate_limited') quietUntil = Date.now() + 2000;
    const msgRelated = code === 'message_too_long' || code === 'empty_message';
    if (lastOut && lastOut.el && lastOut.type === 'message' && Date.now() - lastOut.t < 5000) {
      if (msgRelated || code === 'rate_limited' || code === 'not_in_chat') {
        lastOut.el.classList.add('failed');
        lastOut.el.setAttribute('aria-description', 'not sent');
      }
    }
    showNote(ERRORS[code] || 'Something went wrong; try reloading the page.');
  }

  // ---- actions ---------------------------------------------------------------------------

  function parseInterests() {
    const seen = [];
    for (const raw of interestsIn.value.split(',')) {
      const t = raw.trim().replace(/\s+/g, ' ').toLowerCase();
      if (t && !seen.includes(t)) seen.push(t);
    }
    if (seen.length > 5) return 'At most 5 interests, please.';
    const long = seen.find((t) => [...t].length > 32);
    if (long) return `“${[...long].slice(0, 16).join('')}…” is longer than 32 characters.`;
    return seen;
  }

  function badInterests(text) {
    hint.textContent = text;
    hint.classList.add('bad');
    interestsIn.setAttribute('aria-invalid', 'true');
    interestsIn.focus();
  }

  function sendSearch() {
    const msg = { type: 'search' };
    if (myInterests.length) msg.interests = myInterests;
    out(msg);
  }

  function startSearch() {
    if (mode !== 'chatting') {
      const parsed = parseInterests();
      if (typeof parsed === 'string') {
        badInterests(parsed);
        return;
      }
      myInterests = parsed;
      store(interestsIn.value.trim());
      hint.textContent = hintText;
      hint.classList.remove('bad');
      interestsIn.removeAttribute('aria-invalid');
    }
    typingOff(false);
    peerTyping(false);
    disarm();
    log.textContent = '';
    lastWho = '';
    common = [];
    wasLost = false;
    mode = 'searching';
    sys(
      myInterests.length
        ? ['Looking for someone who likes ', [list(myInterests, 'disjunction')], '…']
        : 'Looking for a stranger…',
    );
    if (conn === 'open') sendSearch();
    else if (conn === 'off') connect();
    render();
    input.focus();
  }

  function stopSearch() {
    if (conn !== 'open') tok = '';
    out({ type: 'leave' });
    mode = 'idle';
    log.textContent = '';
    render();
    startBtn.focus();
  }

  function disarm() {
    clearTimeout(armTimer);
    if (!armed) return;
    armed = false;
    render();
  }

  function next() {
    if (mode === 'searching') {
      stopSearch();
    } else if (mode === 'chatting') {
      if (armed) {
        disarm();
        startSearch(); // during a chat a search is a skip: the stranger is told "next"
      } else {
        armed = true;
        render();
        armTimer = setTimeout(disarm, CONFIRM_MS);
      }
    } else {
      startSearch();
    }
  }

  function sendMessage() {
    if (mode !== 'chatting') return;
    const text = input.value.trim();
    if (!text) return;
    if ([...text].length > maxChars) {
      showNote(`That is ${[...text].length - maxChars} characters over the limit.`);
      return;
    }
    typingOff(true);
    if (!out({ type: 'message', text })) {
      showNote('Not connected; your message was not sent.');
      return;
    }
    lastOut.el = addMsg('you', text);
    input.value = '';
    disarm();
    updateCounter();
    input.focus();
  }

  // ---- wiring ----------------------------------------------------------------------------

  startForm.addEventListener('submit', (e) => {
    e.preventDefault();
    startSearch();
  });
  composer.addEventListener('submit', (e) => {
    e.preventDefault();
    sendMessage();
  });
  nextBtn.addEventListener('click', next);
  retry.addEventListener('click', connect);
  input.addEventListener('input', onInput);
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
      e.preventDefault();
      sendMessage();
    }
  });
  interestsIn.addEventListener('change', () => store(interestsIn.value.trim()));
  document.addEventListener('keydown', (e) => {
    if (e.key !== 'Escape' || e.isComposing || e.repeat) return;
    if (mode === 'chatting') {
      e.preventDefault();
      next();
    } else if (mode === 'ended') {
      e.preventDefault();
      startSearch();
    }
  });
  document.addEventListener('visibilitychange', () => {
    if (document.hidden) return;
    unread = 0;
    document.title = TITLE;
    if (conn === 'off') connect();
  });
  window.addEventListener('online', () => {
    if (conn === 'off') connect();
  });

  interestsIn.value = store();
  render();
  connect();
})();
