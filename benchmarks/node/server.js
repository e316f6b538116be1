// The Node baseline of the fan-out benchmark (benchmarks/fanout/): Socket.IO 4.8 with
// @socket.io/redis-adapter, the stack the systems Switchboard replaces ran. Usage:
//   node benchmarks/node/server.js PORT REDIS_URL
// A client joins the room of the merchant it names in its handshake auth; events reach it from
// Redis through the adapter (published elsewhere in the adapter's own format). GET /healthz
// answers once the adapter's subscription is up.
"use strict";
const http = require("node:http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

async function main() {
  const [port, redisUrl] = process.argv.slice(2);
  const pubClient = createClient({ url: redisUrl });
  const subClient = pubClient.duplicate();
  await Promise.all([pubClient.connect(), subClient.connect()]);
  const httpServer = http.createServer((req, res) => {
    res.writeHead(req.url === "/healthz" ? 200 : 404).end();
  });
  const io = new Server(httpServer, {
    adapter: createAdapter(pubClient, subClient),
    transports: ["websocket"],
    perMessageDeflate: false,
    cors: { origin: "*" },
  });
  io.on("connection", (socket) => {
    socket.join(String((socket.handshake.auth || {}).merchant));
  });
  httpServer.listen(Number(port), "127.0.0.1");
  const stop = () => io.close(() => process.exit(0));
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
