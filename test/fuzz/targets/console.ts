// Fuzz target: virtio-console. One input is an interleaving of host input (tiny to past the
// 64 KiB high-water mark), guest receive buffers (any sizes, split, zero-length, or with
// no writable byte at all), guest transmit chains (any sizes, with stray writable parts),
// host saturation and drains, emergency writes, terminal resizes, kicks and device resets.
// Invariants: host->guest bytes arrive exactly once and in order across any buffer sizes and
// resets (delivered + pending == sent, delivered is a prefix); guest->host bytes reach the
// host exactly once and in order, transmit chains come back with used length 0, and nothing
// is sent while the host is saturated; the host is paused past the high-water mark and
// resumed at the low one; emergency bytes reach the host; a resize updates the config
// space, bumps its generation and interrupts the driver; well-formed chains never cause
// DEVICE_NEEDS_RESET; nothing outside guest memory is touched.

import type { ConsoleDevice } from '../../../devices/console.ts';
import { STATUS_DEVICE_NEEDS_RESET } from '../../../framework/virtio/constants.ts';
import type { ConfigSpace } from '../../../framework/virtio/config-space.ts';
import type { BufferSpec, DriverQueue } from '../../support/driver-queue.ts';
import { makeDevice } from '../../support/fuzz-devices.ts';
import type { FuzzTarget } from '../../support/fuzz-engine.ts';
import { FuzzHarness } from '../../support/fuzz-harness.ts';
import type { ScriptedHostStream } from '../../support/fuzz-host-stream.ts';
import { FuzzMemory } from '../../support/fuzz-memory.ts';
import { Prng } from '../../support/prng.ts';

const RAM = 0x40000;
const HIGH_WATER = 64 * 1024;
/** Guest transmit bytes are < 0x80, emergency-write bytes >= 0x80: the host output splits back into both. */
const POOL = new Prng(0xc0de).bytes(1 << 17).map((b) => b & 0x7f);

interface Context {
  memory: FuzzMemory;
}

function check(cond: boolean, message: string): void {
  if (!cond) throw new Error(message);
}

function slice(rng: Prng, n: number): Uint8Array {
  const at = rng.int(POOL.length - n + 1);
  return POOL.slice(at, at + n);
}

/** Growing byte log. */
class Log {
  private buf = new Uint8Array(4096);
  length = 0;
  push(bytes: Uint8Array): void {
    if (this.length + bytes.length > this.buf.length) {
      const grown = new Uint8Array(Math.max(this.buf.length * 2, this.length + bytes.length));
      grown.set(this.buf.subarray(0, this.length));
      this.buf = grown;
    }
    this.buf.set(bytes, this.length);
    this.length += bytes.length;
  }
  get bytes(): Uint8Array {
    return this.buf.subarray(0, this.length);
  }
}

class Session {
  h!: FuzzHarness;
  rx!: DriverQueue;
  tx!: DriverQueue;
  /** Everything the host sent, and everything the guest received, in order. */
  readonly sent = new Log();
  readonly received = new Log();
  /** Transmit data the guest made available, in ring order, and how much of it was completed. */
  readonly transmitted = new Log();
  txInFlight: Uint8Array[] = [];
  rxConsumed = 0;
  txConsumed = 0;
  /** Emergency writes in order, and whether the host was saturated then (the device may drop those). */
  readonly emergencyWrites: { byte: number; mayDrop: boolean }[] = [];

  constructor(readonly device: ConsoleDevice, readonly host: ScriptedHostStream, readonly memory: FuzzMemory, readonly rng: Prng) {
    this.start();
  }

  start(): void {
    this.h = new FuzzHarness(this.device, this.memory, RAM, { queueSize: this.rng.pick([4, 16, 64]) });
    [this.rx, this.tx] = this.h.queues as [DriverQueue, DriverQueue];
    this.rxConsumed = this.txConsumed = 0;
    this.txInFlight = [];
  }

  async restart(): Promise<void> {
    await this.h.restart(() => this.collect());
    this.rxConsumed = this.txConsumed = 0;
    this.txInFlight = [];
  }

  get totalConfigInterrupts(): number {
    return this.h.configInterrupts;
  }

  /** Take completions: receive data is checked against what the host sent as it arrives. */
  collect(): void {
    for (const u of this.rx.takeUsed()) {
      check(this.received.length + u.written.length <= this.sent.length,
        `host->guest: ${this.received.length + u.written.length} bytes arrived, only ${this.sent.length} were sent`);
      const sent = this.sent.bytes;
      for (let i = 0; i < u.written.length; i++) {
        if (u.written[i] !== sent[this.received.length + i]) {
          throw new Error(`host->guest: byte ${this.received.length + i} is ${u.written[i]}, sent ${sent[this.received.length + i]} (lost, duplicated or reordered)`);
        }
      }
      this.received.push(u.written);
      this.rxConsumed++;
    }
    for (const u of this.tx.takeUsed()) {
      check(u.len === 0, `transmit chain completed with used length ${u.len} (the device writes nothing)`);
      this.txInFlight.shift();
      this.txConsumed++;
    }
  }

  /** Host output since the last check: transmit chunks (bytes < 0x80) and emergency bytes (>= 0x80), each in order. */
  private chunksChecked = 0;
  txOut = 0;
  emergencyOut = 0;

  checkStreams(): void {
    const out = this.host.written;
    const ends = this.host.chunkEnds;
    const tx = this.transmitted.bytes;
    for (; this.chunksChecked < ends.length; this.chunksChecked++) {
      const start = this.chunksChecked === 0 ? 0 : ends[this.chunksChecked - 1]!;
      const chunk = out.subarray(start, ends[this.chunksChecked]!);
      if (chunk.length === 1 && chunk[0]! >= 0x80) {
        // The next emergency write that arrives; ones written while the host was saturated may have been dropped.
        const writes = this.emergencyWrites;
        while (this.emergencyOut < writes.length && writes[this.emergencyOut]!.byte !== chunk[0] && writes[this.emergencyOut]!.mayDrop) this.emergencyOut++;
        const w = writes[this.emergencyOut];
        check(w !== undefined && w.byte === chunk[0], `emergency byte ${chunk[0]} arrived, but the next one written (and not droppable) is ${w?.byte}`);
        this.emergencyOut++;
        continue;
      }
      const want = tx.subarray(this.txOut, this.txOut + chunk.length);
      if (want.length !== chunk.length || Buffer.compare(chunk, want) !== 0) {
        throw new Error(`guest->host: the ${chunk.length} bytes at ${this.txOut} differ from what was transmitted (lost, duplicated or reordered)`);
      }
      this.txOut += chunk.length;
    }
    check(this.received.length + this.device.pendingInput === this.sent.length,
      `host->guest: ${this.received.length} delivered + ${this.device.pendingInput} pending != ${this.sent.length} sent`);
    // (Emergency writes are unbuffered by design: only transmit-queue data must respect saturation.)
    const isTx = (b: Uint8Array) => b.length > 0 && b[0]! < 0x80;
    check(!this.host.sentWhileSaturated.some((s) => isTx(s.bytes) && s.blockedBy.some(isTx)),
      'the device sent transmit data while the host was saturated by earlier transmit data');
    if (this.device.pendingInput > HIGH_WATER) check(this.host.paused, `${this.device.pendingInput} host bytes pending and input not paused`);
    check((this.h.status & STATUS_DEVICE_NEEDS_RESET) === 0, 'well-formed chains caused DEVICE_NEEDS_RESET');
    this.memory.assertObserved();
  }
}

export const consoleTarget: FuzzTarget<Context> = {
  name: 'console',
  summary: 'virtio-console: host input/guest output interleavings, saturation, emergency writes, resizes, resets',
  budget: 20000,
  open: () => ({ memory: FuzzMemory.standard(RAM) }),
  async run(rng, { memory }, stats) {
    memory.clear();
    const fd = makeDevice('console', rng);
    const device = fd.device as ConsoleDevice;
    const host = fd.host!;
    const s = new Session(device, host, memory, rng);
    const emergencyBase = rng.int(0x80);
    try {
      const ops = rng.int(5, 60);
      for (let i = 0; i < ops; i++) {
        const a = rng.int(100);
        if (a < 20) {
          const n = rng.chance(0.01) ? rng.int(HIGH_WATER, 2 * HIGH_WATER) : rng.chance(0.2) ? 0 : rng.int(1, 700);
          const bytes = slice(rng, Math.min(n, POOL.length));
          s.sent.push(bytes);
          host.input.next(bytes.slice()); // the device owns what it receives
          stats.count(n > HIGH_WATER ? 'host: burst past high water' : 'host: input');
        } else if (a < 45) {
          if (s.rx.freeDescriptors === 0) { s.collect(); continue; }
          const parts = rng.int(1, Math.min(4, s.rx.freeDescriptors));
          const specs: BufferSpec[] = [];
          for (let k = 0; k < parts; k++) specs.push({ writableLen: rng.chance(0.1) ? 0 : rng.int(1, rng.chance(0.1) ? 8192 : 300) });
          if (rng.chance(0.05)) { specs.unshift({ data: slice(rng, rng.int(1, 16)) }); stats.count('rx: readable part'); }
          if (rng.chance(0.03)) { specs.length = 0; specs.push({ data: slice(rng, 8) }); stats.count('rx: no writable byte'); }
          try {
            s.rx.addChain(specs.slice(0, s.rx.freeDescriptors), { indirect: rng.chance(0.2) });
          } catch {
            continue;
          }
          if (rng.chance(0.8)) s.h.kick(0);
          stats.count('rx: buffer');
        } else if (a < 70) {
          if (s.tx.freeDescriptors === 0) { s.collect(); continue; }
          const parts = rng.int(1, Math.min(4, s.tx.freeDescriptors));
          const specs: BufferSpec[] = [];
          let data = new Uint8Array(0);
          for (let k = 0; k < parts; k++) {
            const bytes = slice(rng, rng.chance(0.1) ? 0 : rng.int(1, rng.chance(0.005) ? 70_000 : 400));
            specs.push({ data: bytes });
            const joined = new Uint8Array(data.length + bytes.length);
            joined.set(data);
            joined.set(bytes, data.length);
            data = joined;
          }
          if (rng.chance(0.05)) { specs.push({ writableLen: rng.int(1, 32) }); stats.count('tx: writable part'); }
          try {
            s.tx.addChain(specs.slice(0, s.tx.freeDescriptors), { indirect: rng.chance(0.2) });
          } catch {
            continue;
          }
          s.transmitted.push(data);
          s.txInFlight.push(data);
          if (rng.chance(0.8)) s.h.kick(1);
          stats.count('tx: chain');
        } else if (a < 78) {
          host.saturate = !host.saturate;
          if (!host.saturate || rng.chance(0.5)) host.drain();
          await new Promise((r) => setImmediate(r)); // the device sees the host settle before anything else happens
          stats.count('host: saturation toggled');
        } else if (a < 83) {
          const byte = 0x80 | ((emergencyBase + s.emergencyWrites.length) & 0x7f); // unique within a case (ops < 128)
          const width = rng.pick([1, 2, 4]);
          const src = new Uint8Array(width);
          src[0] = byte;
          s.emergencyWrites.push({ byte, mayDrop: host.saturated });
          (device.config as unknown as ConfigSpace).write(8, src); // emerg_wr: the byte in its low bits
          stats.count('emergency write');
        } else if (a < 88) {
          const cfg = device.config as unknown as ConfigSpace;
          const gen = cfg.generation;
          const before = s.totalConfigInterrupts;
          const cols = rng.int(1, 500), rows = rng.int(1, 200);
          const changes = Number(cfg.get('cols')) !== cols || Number(cfg.get('rows')) !== rows;
          host.size.next({ cols, rows });
          check(Number(cfg.get('cols')) === cols && Number(cfg.get('rows')) === rows, 'resize not in config space');
          if (changes) {
            check(cfg.generation !== gen, 'resize did not bump the config generation');
            check(s.totalConfigInterrupts === before + 1, 'resize did not raise one configuration interrupt');
          }
          stats.count('resize');
        } else if (a < 92) {
          s.collect();
          // A re-probe: chains not completed are gone with the rings; their unsent bytes were never transmitted.
          await s.restart();
          stats.count('reset');
          // Chains dropped by the reset count only with the bytes that reached the host before it.
          s.checkStreams();
          s.transmitted.length = s.txOut;
        } else {
          s.h.kick(rng.int(2));
        }
        await Promise.resolve(); // used buffers are published in a microtask
        s.collect();
        s.checkStreams();
      }
      // Wind down: drain the host, give the guest room for every pending byte, kick everything.
      host.saturate = false;
      for (let round = 0; round < 200; round++) {
        host.drain();
        await new Promise((r) => setImmediate(r));
        s.h.kick(1);
        await Promise.resolve();
        await Promise.resolve();
        s.collect();
        if (device.pendingInput > 0 && s.rx.freeDescriptors > 0) {
          try {
            s.rx.addChain([{ writableLen: Math.min(device.pendingInput, 16384) }]);
          } catch {
            // data area full until completions come back
          }
        }
        s.h.kick(0); // buffers posted without a kick count from now on
        await Promise.resolve();
        s.collect();
        if (device.pendingInput === 0 && s.txInFlight.length === 0 && !host.saturated) break;
      }
      s.checkStreams();
      check(device.pendingInput === 0, `${device.pendingInput} host bytes never delivered despite kicked receive buffers`);
      check(s.txInFlight.length === 0, `${s.txInFlight.length} transmit chains never completed`);
      check(s.txOut === s.transmitted.length, `${s.transmitted.length - s.txOut} transmitted bytes never reached the host`);
      check(s.emergencyWrites.slice(s.emergencyOut).every((w) => w.mayDrop), 'an emergency write made while the host was not saturated never arrived');
      if (host.pauseCalls > 0) check(!host.paused, 'host input still paused after the backlog was delivered');
      memory.assertClean();
    } finally {
      fd.close();
    }
  },
  checkCoverage(stats) {
    stats.require('host: burst past high water', 'rx: readable part', 'rx: no writable byte', 'tx: writable part', 'reset',
      'emergency write', 'resize', 'host: saturation toggled');
  },
};
