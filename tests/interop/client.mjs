// Interop client (Node `ws`): subscribe to a channel on a wshub server, then print each of the
// next N messages exactly as received, one per line.
//
// Usage: node client.mjs URL CHANNEL N
import WebSocket from 'ws';

const [url, channel, n] = process.argv.slice(2);
const ws = new WebSocket(url);
let ready = false;
let count = 0;
ws.on('open', () => {
  ws.send(JSON.stringify({ type: 'subscribe', channel }));
  ws.send('{"type":"ping"}');
});
ws.on('message', (data) => {
  const text = data.toString('utf8');
  if (!ready) {
    if (text.includes('"type":"pong"')) {
      ready = true;
      process.stdout.write('READY\n');
    }
    return;
  }
  process.stdout.write(text + '\n');
  if (++count >= Number(n)) ws.close(1000);
});
ws.on('close', () => process.exit(0));
ws.on('error', (e) => {
  process.stderr.write(`error: ${e.message}\n`);
  process.exit(1);
});
