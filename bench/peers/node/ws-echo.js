// Echo server on Node `ws`: a peer for chatd's benchmark. Single-threaded (Node).
//   node ws-echo.js PORT
'use strict';
const { WebSocketServer } = require('ws');
const port = Number(process.argv[2] || 9003);
const wss = new WebSocketServer({ host: '127.0.0.1', port, perMessageDeflate: false, maxPayload: 16 * 1024 * 1024 });
wss.on('connection', (ws) => {
  // Without an error listener the first malformed frame kills the process.
  ws.on('error', () => {});
  ws.on('message', (data, isBinary) => { ws.send(data, { binary: isBinary }); });
});
wss.on('listening', () => console.log(`ws-echo listening on ws://127.0.0.1:${port}/ws`));
