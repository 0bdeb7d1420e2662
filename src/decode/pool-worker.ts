/** Worker thread of DecodePool (pool.ts): decodeBuffer on each posted file; frames go back transferred. */
import { parentPort } from 'node:worker_threads';
import { decodeBuffer } from './index.js';
import type { PoolReply } from './pool.js';
import { DecodeError, type DecodeOptions } from './types.js';

parentPort!.on('message', (m: { bytes: Uint8Array; options: DecodeOptions }) => {
  void (async () => {
    let reply: PoolReply;
    let transfer: ArrayBuffer[] = [];
    try {
      const capture = await decodeBuffer(m.bytes, m.options);
      reply = { ok: true, capture };
      transfer = capture.frames.map((f) => f.data.buffer as ArrayBuffer).filter((b, i, all) => all.indexOf(b) === i);
    } catch (err) {
      reply =
        err instanceof DecodeError
          ? { ok: false, decodeError: true, code: err.code, message: err.message }
          : { ok: false, decodeError: false, name: (err as Error)?.name ?? 'Error', message: (err as Error)?.message ?? String(err) };
    }
    parentPort!.postMessage(reply, transfer);
  })();
});

// Loaded (static imports above): DecodePool.ready() resolves on this.
parentPort!.postMessage({ ready: true });
