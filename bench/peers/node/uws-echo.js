// Echo server on uWebSockets.js (npm @trufflesuite/uws-js-unofficial): a peer for chatd's
// benchmark. Node is single-threaded; uWS runs its loop on that one thread.
//   node uws-echo.js PORT
'use strict';
const uWS = require('@trufflesuite/uws-js-unofficial');
const port = Number(process.argv[2] || 9002);
uWS.App()
  .ws('/*', {
    compression: uWS.DISABLED,
    maxPayloadLength: 16 * 1024 * 1024,
    idleTimeout: 0,
    message: (ws, message, isBinary) => { ws.send(message, isBinary); },
  })
  .listen('127.0.0.1', port, (token) => {
    if (!token) { console.error(`uws-echo: cannot listen on ${port}`); process.exit(1); }
    console.log(`uws-echo listening on ws://127.0.0.1:${port}/ws`);
  });
