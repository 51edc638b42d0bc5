// chatd's proof of work, a Web Worker: for {c: 32 hex digits, b: 1 to 32}, posts {c, n}, n the first
// decimal nonce with SHA-256(c's bytes ‖ n) starting with b zero bits. No crypto.subtle: not on http:.
const K = [], H = [];
for (let p = 2, d; K.length < 64; p++) {
	for (d = 2; p % d; d++);
	if (d < p) continue; // not a prime
	if (H.length < 8) H.push(((Math.sqrt(p) % 1) * 2 ** 32) | 0);
	K.push(((Math.cbrt(p) % 1) * 2 ** 32) | 0);
}
const w = new Int32Array(64);
const r = (x, n) => (x >>> n) | (x << (32 - n));

// The first 32 bits of SHA-256 of the bytes m and the ASCII s, 55 bytes at most: one block.
function first(m, s) {
	const n = m.length + s.length;
	w.fill(0);
	for (let i = 0; i < n; i++) w[i >> 2] |= (m[i] ?? s.charCodeAt(i - m.length)) << (24 - 8 * (i & 3));
	w[n >> 2] |= 0x80 << (24 - 8 * (n & 3));
	w[15] = n * 8;
	for (let i = 16, x, y; i < 64; i++) {
		x = w[i - 15];
		y = w[i - 2];
		w[i] = w[i - 16] + (r(x, 7) ^ r(x, 18) ^ (x >>> 3)) + w[i - 7] + (r(y, 17) ^ r(y, 19) ^ (y >>> 10));
	}
	let [a, b, c, d, e, f, g, h] = H;
	for (let i = 0; i < 64; i++) {
		const t = h + (r(e, 6) ^ r(e, 11) ^ r(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
		const u = (r(a, 2) ^ r(a, 13) ^ r(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
		[h, g, f, e, d, c, b, a] = [g, f, e, (d + t) | 0, c, b, a, (t + u) | 0];
	}
	return (a + H[0]) >>> 0;
}

onmessage = ({ data: { c, b } }) => {
	const m = c.match(/../g).map((x) => parseInt(x, 16));
	let n = 0;
	while (first(m, `${n}`) >= 2 ** (32 - b)) n++;
	postMessage({ c, n: `${n}` });
};
