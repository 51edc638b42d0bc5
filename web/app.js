// chatd: the page. A module (so strict and deferred), no dependencies. What arrives is shown with
// textContent, never as HTML.
const [log, statusEl, retry, typingEl, sr, panel, startForm, startBtn, interestsIn, hint, composer, input, sendBtn,
	nextBtn, note, counter, online, onlineN, rules, agree, reportBtn, blockBtn, why] = ('log status-text retry typing sr ' +
	'panel start-form start interests interests-hint composer input send next note counter online online-n rules agree ' +
	'report block why').split(' ').map((id) => document.getElementById(id));
const hintText = hint.textContent;
const TITLE = document.title;
const KEY = 'chatd.interests';
const AGREED = 'chatd.rules'; // a flag: the rules were accepted
const TYPING_IDLE = 3000; // send typing:false after this long without a keystroke
const PEER_TYPING_TTL = 45000; // a safety net: hide the stranger's indicator after this long
const CONFIRM_MS = 3000; // "Really?" waits this long for the second press
const AFTER_MS = 55000; // Report and Block stay after a chat; the server takes them for 60 s

let ws = null;
let conn = 'connecting'; // connecting | open | off | banned
let mode = 'idle'; // idle | searching | chatting | ended
let paused = false; // a cluster node cannot reach the shared queue: searches wait
let quietUntil = 0; // no typing events until then, after a rate_limited error
let lastOut = null; // {t, el}: what was sent last, when, its line
let tok = ''; // resume token, memory only
let pow = null; // {c, n}: the challenge the next search answers and, once solved, its nonce
let waiting = false; // a search waits for its proof of work
let picking = false; // the reasons for a report are shown
let agreed = !!store(AGREED);
let endText = '', lastWho = '', closeNote = '', common = [], myInterests = [];
let maxChars = 2000, attempt = 0, retryAt = 0, endedAt = 0, unread = 0;
let everOpen, armed, typingOn, wasLost, resuming, worker;
let retryTimer, tickTimer, armTimer, typingTimer, peerTimer, noteTimer;

const list = (items, type) => new Intl.ListFormat('en', { type }).format(items);
function store(k, v) {
	try {
		return v === undefined ? localStorage.getItem(k) : localStorage.setItem(k, v);
	} catch {} // storage may be disabled
}

function statusLine() {
	if (conn === 'banned') return 'chatd is not available to you.';
	if (conn !== 'open' && attempt) {
		const s = Math.max(1, Math.ceil((retryAt - Date.now()) / 1000));
		const lead = closeNote || (everOpen ? 'Connection lost.' : 'Cannot reach the server.');
		return `${lead} Reconnecting${conn === 'off' ? ` in ${s} s` : ''}…`;
	}
	if (conn === 'connecting') return 'Connecting…';
	if (mode === 'searching') return paused ? 'Matching is paused while the service reconnects. You keep your place…' : 'Looking for a stranger…';
	if (mode === 'chatting') return common.length ? `Chatting · you both like ${list(common, 'conjunction')}` : 'Chatting with a random stranger';
	return mode === 'ended' ? endText : 'Ready';
}

function render() {
	const chatting = mode === 'chatting';
	const acts = conn === 'open' && (chatting || (mode === 'ended' && Date.now() - endedAt < AFTER_MS));
	document.body.className = conn === 'banned' ? 'ban c-off' : `s-${mode}${conn !== 'open' && attempt ? ' c-off' : ''}`;
	statusEl.textContent = statusLine();
	retry.hidden = conn !== 'off';
	reportBtn.hidden = blockBtn.hidden = !acts;
	why.hidden = !(picking &&= acts);
	reportBtn.setAttribute('aria-expanded', picking);
	nextBtn.textContent = mode === 'searching' ? 'Stop' : armed ? 'Really?' : 'New chat';
	nextBtn.classList.toggle('armed', !!armed);
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
const toBottom = () => (log.scrollTop = log.scrollHeight);
const el = (tag, className, textContent = '') => Object.assign(document.createElement(tag), { className, textContent });
// Appends to the log; stick: keep the bottom in view
function add(row, stick = nearBottom()) {
	log.append(row);
	if (stick) toBottom();
	return row;
}

// parts: strings, or [string] for a bold part
function sys(parts, cls = '') {
	const p = el('p', `sys ${cls}`);
	for (const part of [].concat(parts)) p.append(Array.isArray(part) ? el('b', '', part[0]) : part);
	lastWho = '';
	add(p);
}

function addMsg(who, text) {
	const row = el('div', `msg ${who}${lastWho === who ? ' cont' : ''}`);
	row.append(el('span', 'who', who === 'you' ? 'You' : 'Stranger'), Object.assign(el('p', 'text', text), { dir: 'auto' }));
	lastWho = who;
	return add(row, nearBottom() || who === 'you');
}

function showNote(text) {
	note.textContent = text;
	clearTimeout(noteTimer);
	noteTimer = setTimeout(() => (note.textContent = ''), 6000);
}

function setOnline(n) {
	if (typeof n !== 'number' || !(n >= 0)) return;
	online.hidden = false;
	onlineN.textContent = `${n.toLocaleString('en')} online`;
}

function attention() {
	if (document.hidden) document.title = `(${++unread}) ${TITLE}`;
}

function peerTyping(on) {
	const stick = nearBottom();
	clearTimeout(peerTimer);
	typingEl.hidden = !on;
	if (on) {
		peerTimer = setTimeout(() => peerTyping(false), PEER_TYPING_TTL);
		sr.textContent = 'Stranger is typing'; // said once a chat: a live region speaks changes only
	}
	if (stick) toBottom();
}

function typingOff(send) {
	clearTimeout(typingTimer);
	if (typingOn && send) out({ type: 'typing', active: false });
	typingOn = false;
}

// The chat is over or on hold: no typing either way, no armed skip.
function hush() {
	typingOff(false);
	peerTyping(false);
	disarm();
}

function onInput() {
	updateCounter();
	disarm();
	if (mode !== 'chatting') return;
	if (!input.value.trim()) return typingOff(true);
	if (!typingOn && Date.now() > quietUntil && out({ type: 'typing', active: true })) typingOn = true;
	clearTimeout(typingTimer);
	typingTimer = setTimeout(() => typingOff(true), TYPING_IDLE);
}

function out(msg) {
	if (ws?.readyState !== 1) return false;
	ws.send(JSON.stringify(msg));
	lastOut = { t: Date.now() };
	return true;
}

function connect() {
	clearTimeout(retryTimer);
	clearInterval(tickTimer);
	if (ws) return;
	conn = 'connecting';
	render();
	let s;
	try {
		s = ws = new WebSocket(`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`);
	} catch {
		return lost(0);
	}
	s.onopen = () => {
		conn = 'open';
		everOpen = true;
		attempt = 0;
		closeNote = '';
		resuming = tok && out({ type: 'resume', token: tok });
		render();
	};
	s.onmessage = (e) => typeof e.data === 'string' && onFrame(e.data);
	s.onclose = (e) => {
		ws = null;
		const off = () => lost(e.code);
		if (conn === 'open') return off();
		// It never opened, and a WebSocket hides the HTTP status: a plain GET tells a ban (403) apart.
		fetch('/ws').then((r) => (r.status === 403 ? ((conn = 'banned'), render()) : off()), off);
	};
}

function lost(code) {
	conn = 'off';
	wasLost = true;
	if (code !== 1006) tok = ''; // closed: no resume
	online.hidden = true;
	hush();
	closeNote = code === 1001 ? 'The server is restarting.' : '';
	if (!tok) drop();
	if (code === 1008) {
		if (mode === 'searching') mode = 'ended';
		endText = closeNote = 'The server closed the connection: too many messages.';
		attempt = Math.max(attempt, 4);
	}
	const base = Math.min(tok && attempt < 20 ? 2000 : 30000, 1000 * 2 ** attempt++);
	const delay = Math.max(1000, base / 2 + (Math.random() * base) / 2);
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
	if (!keep) drop();
	if (!keep && mode === 'searching') {
		sendSearch();
		if (wasLost) sys('Reconnected. Looking for a stranger…');
	}
	wasLost = false;
	render();
}

function onFrame(data) {
	let m;
	try {
		m = JSON.parse(data);
	} catch {}
	const chatting = mode === 'chatting';
	switch (m?.type) {
		case 'welcome':
			paused = waiting = false;
			if (Number.isInteger(m.max_message_chars) && m.max_message_chars > 0) maxChars = m.max_message_chars;
			setOnline(m.online);
			tok = m.resume_token;
			solve(m.pow);
			if (!resuming) back();
			break;
		case 'resumed': tok = m.resume_token; back(m.state === mode); break;
		case 'searching': solve(m.pow); break; // the next search's challenge
		case 'partner_away': if (chatting) sys("Stranger's connection dropped, waiting…"); break;
		case 'partner_back': if (chatting) sys('Stranger is back'); break;
		case 'online': setOnline(m.count); break;
		case 'typing': if (chatting) peerTyping(m.active === true); break;
		case 'partner_left': if (chatting) partnerLeft(m.reason); break;
		case 'matching': paused = m.available === false; render(); break;
		case 'matched':
			paused = false;
			if (mode === 'searching') matched(Array.isArray(m.common_interests) ? m.common_interests : []);
			break;
		case 'message':
			if (!chatting || typeof m.text !== 'string') break;
			peerTyping(false);
			addMsg('them', m.text);
			attention();
			break;
		case 'error':
			if (resuming) back(); // resume_failed (old server: unknown_type)
			else if (/^pow_/.test(m.code)) {
				// The search was refused for want of a proof of work: solve this challenge, then search again.
				waiting = mode === 'searching' && !!m.pow;
				solve(m.pow);
			} else onError(String(m.code));
	}
}

// Proof of work: a Web Worker (pow.js) solves each challenge as soon as it arrives.
function solve(p) {
	if (pow && !pow.n) worker = worker.terminate(); // still busy with a challenge that is no good now
	pow = /^[0-9a-f]{32}$/i.test(p?.challenge) ? { c: p.challenge } : null;
	if (!pow) return waiting && sendSearch();
	worker ||= new Worker('pow.js');
	worker.onmessage = ({ data: { c, n } }) => pow?.c === c && (pow.n = n) && waiting && sendSearch();
	worker.postMessage({ c: pow.c, b: p.bits });
}

const LEFT = { next: 'Stranger skipped to a new chat.', left: 'Stranger has left the chat.', disconnected: 'Stranger has disconnected.' };

function partnerLeft(reason) {
	if (reason !== 'shutdown') {
		endChat(LEFT[reason] || 'The chat has ended.');
		return attention();
	}
	// The server is about to close the socket; look again once it is back, as after a drop.
	hush();
	sys('The server is restarting, so the chat has ended.', 'end');
	mode = 'searching';
	sendSearch();
	render();
}

function endChat(text) {
	const hadFocus = composer.contains(document.activeElement);
	mode = 'ended';
	endText = text;
	endedAt = Date.now();
	setTimeout(render, AFTER_MS); // hides Report and Block
	hush();
	sys(text, 'end');
	render();
	// The composer is gone now; park focus on the panel, not on a button a stray Enter would press.
	if (hadFocus) panel.focus();
}

function matched(shared) {
	mode = 'chatting';
	common = shared.filter((s) => typeof s === 'string' && s);
	sr.textContent = '';
	sys(
		common.length
			? ["You're now chatting with a stranger. You both like ", [list(common, 'conjunction')], '.']
			: `You're now chatting with a random stranger${myInterests.length ? '; nobody shared your interests' : ''}. Say hi!`,
	);
	render();
	input.focus();
	attention();
}

const ERRORS = {
	rate_limited: 'You are sending too fast; that was dropped.',
	message_too_long: 'That message is too long.',
	empty_message: 'Empty messages are not sent.',
	not_in_chat: 'Not delivered: the chat had already ended.',
};

function onError(code) {
	if (code === 'bad_interests') {
		if (mode === 'searching') stopSearch(true);
		return badInterests('Each interest must be 1 to 32 characters, at most 5 of them.');
	}
	if (code === 'rate_limited') quietUntil = Date.now() + 2000;
	const row = lastOut?.el; // set for a message only
	if (row && Date.now() - lastOut.t < 5000 && ERRORS[code]) {
		row.classList.add('failed');
		row.setAttribute('aria-description', 'not sent');
	}
	showNote(ERRORS[code] || 'Something went wrong; try reloading the page.');
}

function parseInterests() {
	const seen = [];
	for (const raw of interestsIn.value.split(',')) {
		const t = raw.trim().replace(/\s+/g, ' ').toLowerCase();
		if (t && !seen.includes(t)) seen.push(t);
	}
	if (seen.length > 5) return 'At most 5 interests, please.';
	const long = seen.find((t) => [...t].length > 32);
	return long ? `“${[...long].slice(0, 16).join('')}…” is longer than 32 characters.` : seen;
}

function setHint(text) {
	hint.textContent = text || hintText;
	hint.classList.toggle('bad', !!text);
}

function badInterests(text) {
	setHint(text);
	interestsIn.setAttribute('aria-invalid', 'true');
	interestsIn.focus();
}

function sendSearch() {
	if ((waiting = pow && !pow.n)) return; // it goes once the worker has solved the challenge
	out({ type: 'search', interests: myInterests.length ? myInterests : undefined, pow: pow?.n });
	pow = null; // a challenge is good for one search; `searching` brings the next
}

// first: a line for the top of the new log
function startSearch(first) {
	if (mode !== 'chatting') {
		if (!agreed) return agree.focus(); // in the labelled rules
		const parsed = parseInterests();
		if (typeof parsed === 'string') return badInterests(parsed);
		myInterests = parsed;
		store(KEY, interestsIn.value.trim());
		setHint();
		interestsIn.removeAttribute('aria-invalid');
	}
	hush();
	log.textContent = lastWho = '';
	common = [];
	wasLost = false;
	mode = 'searching';
	if (first) sys(first);
	sys(myInterests.length ? ['Looking for someone who likes ', [list(myInterests, 'disjunction')], '…'] : 'Looking for a stranger…');
	if (conn === 'open') sendSearch();
	else if (conn === 'off') connect();
	render();
	input.focus();
}

// refused: the server dropped the search itself
function stopSearch(refused) {
	if (conn !== 'open') tok = '';
	if (!refused) out({ type: 'leave' });
	waiting = false;
	mode = 'idle';
	log.textContent = '';
	render();
	if (!refused) startBtn.focus();
}

function disarm() {
	clearTimeout(armTimer);
	if (!armed) return;
	armed = false;
	render();
}

function next() {
	if (mode === 'searching') stopSearch();
	else if (mode !== 'chatting' || armed) startSearch(); // during a chat a search is a skip: the stranger is told "next"
	else {
		armed = true;
		render();
		armTimer = setTimeout(disarm, CONFIRM_MS);
	}
}

// Reports or blocks the stranger, then looks for the next one. During a chat the server ends it
// (the stranger sees a skip, never a report).
function act(msg, line) {
	picking = false;
	if (!out(msg)) return;
	sys(line); // kept should the search not start (bad interests)
	startSearch(line);
}

function pick(on) {
	picking = on;
	render();
	(on ? why.querySelector('button') : reportBtn).focus();
}

function sendMessage() {
	const text = input.value.trim();
	if (mode !== 'chatting' || !text) return;
	const n = [...text].length;
	if (n > maxChars) return showNote(`That is ${n - maxChars} characters over the limit.`);
	typingOff(true);
	if (!out({ type: 'message', text })) return showNote('Not connected; your message was not sent.');
	lastOut.el = addMsg('you', text);
	input.value = '';
	disarm();
	updateCounter();
	input.focus();
}

startForm.onsubmit = composer.onsubmit = (e) => {
	e.preventDefault();
	if (e.target === composer) sendMessage();
	else startSearch();
};
nextBtn.onclick = next;
retry.onclick = connect;
reportBtn.onclick = () => pick(!picking);
blockBtn.onclick = () => act({ type: 'block' }, 'You blocked the stranger; you will not meet again.');
// Each reason's button carries it as its value.
why.onclick = ({ target: { value } }) => value && act({ type: 'report', reason: value }, 'You reported the stranger.');
agree.onclick = () => {
	agreed = rules.hidden = true;
	store(AGREED, 1);
	startBtn.focus();
};
input.oninput = onInput;
input.onkeydown = (e) => {
	if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
		e.preventDefault();
		sendMessage();
	}
};
interestsIn.onchange = () => store(KEY, interestsIn.value.trim());
document.onkeydown = (e) => {
	if (e.key !== 'Escape' || e.isComposing || e.repeat) return;
	if (picking) pick(false);
	else if (mode === 'chatting') next();
	else if (mode === 'ended') startSearch();
	else return;
	e.preventDefault();
};
document.addEventListener('visibilitychange', () => {
	if (document.hidden) return;
	unread = 0;
	document.title = TITLE;
	if (conn === 'off') connect();
});
window.ononline = () => conn === 'off' && connect();

interestsIn.value = store(KEY) || '';
rules.hidden = agreed;
render();
connect();
