// Peer: Bun.serve (uWebSockets inside) with ws.subscribe / server.publish: the fastest peer we
// know. It speaks the subset of wshub's JSON protocol the load generator uses:
//   {"type":"subscribe","channel":C} (or "data":C), {"type":"unsubscribe",...},
//   {"type":"ping"} -> {"type":"pong","timestamp":T},
//   {"type":"publish","channel":C,"data":D} -> {"type":"event","channel":C,"data":D,"timestamp":T}
//   to every subscriber of C (the sender too: server.publish, not ws.publish).
//
// Usage: bun server.js [PORT]   (default 8083; listens on 127.0.0.1 only)
// Install: npm install (in this folder; the `bun` npm package ships the binary).

const port = Number(process.argv[2] || process.env.PORT || 8083);

function reply(type, extra) {
  return JSON.stringify({ type, ...extra, timestamp: new Date().toISOString() });
}

const server = Bun.serve({
  hostname: "127.0.0.1",
  port,
  fetch(req, server) {
    if (server.upgrade(req)) return;
    return new Response("expected a WebSocket upgrade", { status: 400 });
  },
  websocket: {
    perMessageDeflate: false,
    message(ws, message) {
      let m;
      try {
        m = JSON.parse(message);
      } catch (e) {
        ws.send(reply("error", { data: "invalid message: " + e.message }));
        return;
      }
      const channel = m.channel ?? (typeof m.data === "string" ? m.data : undefined);
      switch (m.type) {
        case "subscribe":
          if (channel) ws.subscribe(channel);
          break;
        case "unsubscribe":
          if (channel) ws.unsubscribe(channel);
          break;
        case "ping":
          ws.send(reply("pong", {}));
          break;
        case "publish":
          if (channel) {
            server.publish(
              channel,
              JSON.stringify({
                type: "event",
                channel,
                data: m.data,
                timestamp: new Date().toISOString(),
              }),
            );
          }
          break;
        default:
          ws.send(reply("error", { data: `unsupported message type ${JSON.stringify(m.type)}` }));
      }
    },
  },
});

console.error(`bun peer listening on ws://127.0.0.1:${server.port}/ws`);
