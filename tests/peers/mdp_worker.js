// A 7/MDP worker in Node (the npm "zeromq" package), written from the spec, run by tacore as
// a command worker: it knows only the documented environment (TACORE_BACKEND,
// TACORE_SERVICE, TACORE_WORKER_IDENTITY, TACORE_HEARTBEAT_INTERVAL). It echoes each
// request's body after a "200" frame; a body "hang" blocks it for good.
const zmq = require("zeromq");

const READY = Buffer.from([1]), REQUEST = 2, REPLY = Buffer.from([3]);
const HEARTBEAT = Buffer.from([4]), DISCONNECT = 5;
const header = [Buffer.alloc(0), Buffer.from("MDPW01")];

async function main() {
  const env = process.env;
  const interval = Math.round(parseFloat(env.TACORE_HEARTBEAT_INTERVAL) * 1000);
  const sock = new zmq.Dealer({routingId: env.TACORE_WORKER_IDENTITY, linger: 0,
                               receiveTimeout: interval});
  sock.connect(env.TACORE_BACKEND);
  await sock.send([...header, READY, env.TACORE_SERVICE]);
  console.log("node worker ready");
  for (;;) {
    let frames;
    try {
      frames = await sock.receive();
    } catch (e) {
      if (e.code !== "EAGAIN") throw e;
      await sock.send([...header, HEARTBEAT]);  // idle for an interval
      continue;
    }
    const command = frames[2][0];
    if (command === DISCONNECT) return;
    if (command === REQUEST) {  // ["", MDPW01, 0x02, client, "", body...]
      const client = frames[3], body = frames.slice(5);
      if (body.length && body[0].toString() === "hang") await new Promise(() => {});
      await sock.send([...header, REPLY, client, Buffer.alloc(0), "200", ...body]);
    }
  }
}

main().then(() => process.exit(0), (e) => { console.error(e); process.exit(1); });
