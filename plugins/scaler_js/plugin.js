// scaler_js: a Plugboard plugin in JavaScript, written from protocol/PROTOCOL.md alone.
//
// It derives scaler_js/scaled = counter_c/count × scaler_js/factor whenever either
// changes. factor may be written by anyone. Uses the zeromq and @msgpack/msgpack npm
// packages; run `npm ci` in this folder first.
"use strict";
const zmq = require("zeromq");
const { Encoder, Decoder, ExtensionCodec } = require("@msgpack/msgpack");

const DURATION_EXT = 1;
const REPLY_TIMEOUT_MS = 5000;
const endpoint = process.env.PLUGBOARD_ENDPOINT;
const name = process.env.PLUGBOARD_NAME;
const token = process.env.PLUGBOARD_TOKEN;

// Durations are our ext type 1: big-endian int64 nanoseconds.
class Duration { constructor(ns) { this.ns = BigInt(ns); } }
const extensions = new ExtensionCodec();
extensions.register({
  type: DURATION_EXT,
  encode: (value) => {
    if (!(value instanceof Duration)) return null;
    const bytes = new Uint8Array(8);
    new DataView(bytes.buffer).setBigInt64(0, value.ns);
    return bytes;
  },
  decode: (data) => new Duration(new DataView(data.buffer, data.byteOffset, 8).getBigInt64(0)),
});
// Integral floats are written as ints by default; the broker accepts them for floats.
const encoder = new Encoder({ extensionCodec: extensions, useBigInt64: true });
const decoder = new Decoder({ extensionCodec: extensions, useBigInt64: false });

let sock, nextId = 1, count = 0, factor = 1, heartbeatMs = 2000, ending = false;
let config = { source: "counter_c/count" };
const pending = new Map();   // msgid -> {resolve, reject, timer}
let initDone = null;

function send(message) { return sock.send(encoder.encode(message)); }

function request(method, params = {}) {
  const msgid = nextId++;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      pending.delete(msgid);
      reject(Object.assign(new Error(`${method}: no reply within ${REPLY_TIMEOUT_MS} ms`),
                           { code: "timeout" }));
    }, REPLY_TIMEOUT_MS);
    pending.set(msgid, { resolve, reject, timer, method });
    send([0, msgid, method, params]).catch(reject);
  });
}

async function readLoop(socket) {
  for await (const [frame] of socket) {
    let message;
    try { message = decoder.decode(frame); } catch (err) {
      console.error(`scaler_js: undecodable frame: ${err.message}`);
      continue;
    }
    const [kind] = message;
    if (kind === 1) {
      const [, msgid, error, result] = message;
      const waiter = pending.get(msgid);
      if (!waiter) continue;
      pending.delete(msgid);
      clearTimeout(waiter.timer);
      if (error) {
        console.error(`scaler_js: ${waiter.method} failed: ${error.code}: ${error.message}`);
        waiter.reject(Object.assign(new Error(error.message), { code: error.code }));
      } else waiter.resolve(result);
    } else if (kind === 0) {
      const [, msgid, method, params] = message;
      if (method === "init") {
        config = { ...config, ...(params.config || {}) };
        await send([1, msgid, null, {}]);
        if (initDone) initDone();
      } else if (method === "end") {
        ending = true;
        await send([1, msgid, null, {}]);
        shutdown(0);
      } else if (method === "call" && params.method === "scale") {
        // The one exported method, scale(value: float) -> float; the broker checked
        // the parameter's type against the contract.
        await send([1, msgid, null, { result: params.params.value * factor }]);
      } else {
        await send([1, msgid, { code: "unknown_method", message: `no ${method} here` }, null]);
      }
    } else if (kind === 2 && message[1] === "changes") {
      onChanges(message[2]).catch((err) => console.error(`scaler_js: ${err.message}`));
    }
  }
}

const names = new Map();   // handle -> name, from the first item that carries it
async function onChanges(params) {
  let changed = false;
  for (const item of params.items || []) {
    if (item.length > 4) names.set(item[0], item[4]);
    const itemName = names.get(item[0]);
    if (itemName === config.source && typeof item[1] === "number") { count = item[1]; changed = true; }
    if (itemName === `${name}/factor` && typeof item[1] === "number") { factor = item[1]; changed = true; }
  }
  if (changed) {
    await request("set_many", { items: [[`${name}/scaled`, count * factor],
                                         [`${name}/updated_at`, new Date()]] });
  }
}

async function startSession() {
  if (sock) sock.close();
  sock = new zmq.Dealer({ linger: 0 });
  if (process.env.PLUGBOARD_SERVER_KEY) {
    // On tcp the runtime hands out a per-launch CURVE pair (Z85 text).
    sock.curveServerKey = process.env.PLUGBOARD_SERVER_KEY;
    sock.curvePublicKey = process.env.PLUGBOARD_PUBLIC_KEY;
    sock.curveSecretKey = process.env.PLUGBOARD_SECRET_KEY;
  }
  sock.connect(endpoint);
  readLoop(sock).catch(() => {});
  const initialised = new Promise((resolve) => { initDone = resolve; });
  const hello = { versions: [1], role: "plugin", name, client: "scaler_js (zeromq.js)" };
  if (token) hello.token = token;
  const reply = await request("hello", hello);
  heartbeatMs = reply.heartbeat_ms || heartbeatMs;
  await initialised;
  await request("declare", { name: `${name}/factor`, type: "int", value: factor,
                             writable_by: ["*"], description: "multiplies the source" });
  await request("declare", { name: `${name}/scaled`, type: "int", value: count * factor });
  await request("declare", { name: `${name}/updated_at`, type: "timestamp", value: new Date() });
  await request("declare", { name: `${name}/interval`, type: "duration",
                             value: new Duration(BigInt(heartbeatMs) * 1000000n) });
  await request("subscribe", { pattern: config.source });
  await request("subscribe", { pattern: `${name}/factor`, current: false });
  console.error(`scaler_js: ready, scaling ${config.source}`);
}

async function keepAlive() {
  while (!ending) {
    await new Promise((resolve) => setTimeout(resolve, heartbeatMs));
    if (ending) return;
    try { await request("ping"); } catch (err) {
      if (ending) return;
      console.error(`scaler_js: broker lost (${err.code}); reconnecting`);
      for (;;) {
        try { await startSession(); break; } catch (retry) {
          await new Promise((resolve) => setTimeout(resolve, 500));
        }
      }
    }
  }
}

function shutdown(code) {
  ending = true;
  console.error("scaler_js: end received, exiting");
  setTimeout(() => { sock.close(); process.exit(code); }, 50);
}

if (!endpoint || !name) {
  console.error("scaler_js: PLUGBOARD_ENDPOINT and PLUGBOARD_NAME must be set");
  process.exit(2);
}
process.on("SIGTERM", () => shutdown(0));
startSession().then(keepAlive).catch((err) => {
  console.error(`scaler_js: ${err.message}`);
  process.exit(1);
});
