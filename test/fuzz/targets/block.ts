// Fuzz target: virtio-blk requests. One input is a disk (size, read-only or not, serial) and
// a few batches of requests in flight together: every request type (IN, OUT, FLUSH, GET_ID,
// DISCARD, WRITE_ZEROES, GET_LIFETIME, SECURE_ERASE, any u32), sectors in range, at the edge,
// past the end and near 2^64, data lengths whole or ragged, headers whole, split across
// descriptors, sharing a descriptor with the data, or short; the status byte alone, at the
// end of the data, or missing; segment lists of any count, flags and ranges. The backing
// file completes operations in a random order and sometimes fails them (EIO/ENOSPC).
// Invariants (virtio 1.2 §5.2.6, with this device's documented choices): each request gets
// exactly the status and used length a reference model derives from the spec, IN returns
// the disk's bytes, the disk afterwards holds exactly what the model says, host failures
// become IOERR and are counted in stats.ioErrors, the device never needs a reset for
// well-formed chains, and nothing outside guest memory is touched.

import type { BlockDevice } from '../../../devices/block.ts';
import { STATUS_DEVICE_NEEDS_RESET } from '../../../framework/virtio/constants.ts';
import type { BufferSpec, DriverQueue } from '../../support/driver-queue.ts';
import { makeDevice } from '../../support/fuzz-devices.ts';
import type { MemoryBlockFile } from '../../support/fuzz-block-file.ts';
import type { FuzzStats, FuzzTarget } from '../../support/fuzz-engine.ts';
import { FuzzHarness } from '../../support/fuzz-harness.ts';
import { FuzzMemory } from '../../support/fuzz-memory.ts';
import { Prng } from '../../support/prng.ts';

const RAM = 0x40000;
const SECTOR = 512;
const OK = 0, IOERR = 1, UNSUPP = 2;
const T_IN = 0, T_OUT = 1, T_FLUSH = 4, T_GET_ID = 8, T_GET_LIFETIME = 10, T_DISCARD = 11, T_WRITE_ZEROES = 13,
  T_SECURE_ERASE = 14;
const MAX_SEGMENTS = 32;
const MAX_SEGMENT_SECTORS = 0x3fffff;
const FLAG_UNMAP = 1;
/** Initial disk contents (the largest disk is 255 sectors). */
const PATTERN = Uint8Array.from({ length: 256 * SECTOR }, (_, i) => (Math.imul(i + 1, 0x9e3779b1) >>> 24) ^ (i >>> 9));
/** Payload bytes: a slice of this pool at a random offset (cheaper than a fresh random byte each). */
const POOL = new Prng(0x5eed).bytes(1 << 16);

function payloadBytes(rng: Prng, n: number): Uint8Array {
  const at = rng.int(POOL.length - n + 1);
  return POOL.slice(at, at + n);
}

interface Context {
  memory: FuzzMemory;
}

interface Request {
  type: number;
  /** Description for failure messages. */
  what: string;
  specs: BufferSpec[];
  /** Statuses the spec allows (first = the model's answer when the host does not fail). */
  statuses: number[];
  /** Used length for each allowed status (by index); -1: no status byte at all. */
  usedLen: number;
  /** Bytes expected in the data-in part (IN and GET_ID). */
  dataIn: Uint8Array | null;
  /** Disk effect when it succeeds. */
  effect: { kind: 'write'; at: number; bytes: Uint8Array } | { kind: 'zero' | 'unknown'; ranges: [number, number][] } | null;
  /** The request reaches the backing file (and may be failed by it). */
  touchesFile: boolean;
  /** Byte ranges it reads or changes (for keeping a batch's requests independent). */
  footprint: [number, number][];
  writes: boolean;
}

function check(cond: boolean, message: string): void {
  if (!cond) throw new Error(message);
}

class Disk {
  readonly bytes: Uint8Array;
  /** 1 where the byte's content is known. */
  readonly known: Uint8Array;
  constructor(initial: Uint8Array) {
    this.bytes = initial.slice();
    this.known = new Uint8Array(initial.length).fill(1);
  }
}

function header(type: number, sector: bigint): Uint8Array {
  const b = new Uint8Array(16);
  const v = new DataView(b.buffer);
  v.setUint32(0, type >>> 0, true);
  v.setUint32(4, 0, true);
  v.setBigUint64(8, BigInt.asUintN(64, sector), true);
  return b;
}

/** Header buffers: whole, split in two descriptors, or (rarely) short. */
function headerSpecs(rng: Prng, h: Uint8Array, stats: FuzzStats): { specs: BufferSpec[]; short: boolean; shareWith?: true } {
  const r = rng.int(20);
  if (r === 0) {
    stats.count('header: short');
    const k = rng.int(16);
    return { specs: k ? [{ data: h.subarray(0, k) }] : [], short: true };
  }
  if (r < 4) {
    stats.count('header: split');
    const k = rng.int(1, 16);
    return { specs: [{ data: h.subarray(0, k) }, { data: h.subarray(k) }], short: false };
  }
  if (r < 6) return { specs: [{ data: h }], short: false, shareWith: true };
  return { specs: [{ data: h }], short: false };
}

function pickSector(rng: Prng, capacity: number, sectors: number): bigint {
  return BigInt.asUintN(64, anySector(rng, capacity, sectors));
}

function anySector(rng: Prng, capacity: number, sectors: number): bigint {
  switch (rng.int(12)) {
    case 0: return BigInt(capacity - sectors + rng.int(1, 4)); // runs past the end
    case 1: return BigInt(capacity + rng.int(0, 2));
    case 2: return rng.pick([(1n << 53n) - 1n, 1n << 53n, (1n << 63n), (1n << 64n) - 1n, (1n << 64n) - BigInt(sectors)]);
    case 3: return (BigInt(rng.u32()) << 32n) | BigInt(rng.u32());
    default: return BigInt(rng.int(Math.max(1, capacity - sectors + 1)));
  }
}

/** A data length: usually whole sectors, sometimes ragged. */
function pickBytes(rng: Prng, capacity: number): number {
  if (rng.chance(0.1)) return rng.int(1, 4096); // not a multiple of 512 (usually)
  return SECTOR * rng.int(0, Math.min(8, capacity) + 1);
}

function inRange(sector: bigint, bytes: number, capacity: number): boolean {
  return bytes % SECTOR === 0 && sector <= BigInt(capacity) && sector + BigInt(bytes / SECTOR) <= BigInt(capacity);
}

function makeRequest(rng: Prng, disk: Disk, capacity: number, readOnly: boolean, serial: Uint8Array, stats: FuzzStats): Request {
  const typeRoll = rng.int(100);
  const type = typeRoll < 30 ? T_IN : typeRoll < 55 ? T_OUT : typeRoll < 62 ? T_FLUSH : typeRoll < 68 ? T_GET_ID
    : typeRoll < 78 ? T_DISCARD : typeRoll < 88 ? T_WRITE_ZEROES
    : rng.pick([T_GET_LIFETIME, T_SECURE_ERASE, 2, 3, 5, 15, 0xffff_ffff, rng.u32()]);
  const name = { [T_IN]: 'IN', [T_OUT]: 'OUT', [T_FLUSH]: 'FLUSH', [T_GET_ID]: 'GET_ID', [T_DISCARD]: 'DISCARD', [T_WRITE_ZEROES]: 'WRITE_ZEROES' }[type] ?? 'other';
  stats.count(`type: ${name}`);
  const noStatus = rng.chance(0.03);
  const req: Request = {
    type, what: name, specs: [], statuses: [OK], usedLen: 1, dataIn: null, effect: null, touchesFile: false, footprint: [], writes: false,
  };

  let payload: Uint8Array = new Uint8Array(0);
  let dataInLen = 0;
  let sector = 0n;
  if (type === T_IN || type === T_GET_ID) {
    dataInLen = type === T_GET_ID ? rng.pick([0, 1, 19, 20, 21, rng.int(64)]) : pickBytes(rng, capacity);
    sector = type === T_GET_ID ? BigInt(rng.int(4)) : pickSector(rng, capacity, Math.ceil(dataInLen / SECTOR));
  } else if (type === T_OUT) {
    const n = pickBytes(rng, capacity);
    sector = pickSector(rng, capacity, Math.ceil(n / SECTOR));
    payload = payloadBytes(rng, n);
  } else if (type === T_DISCARD || type === T_WRITE_ZEROES) {
    const count = rng.chance(0.9) ? rng.int(1, 4) : rng.pick([0, MAX_SEGMENTS, MAX_SEGMENTS + 1, 40]);
    payload = new Uint8Array(16 * count + (rng.chance(0.05) ? rng.int(1, 16) : 0));
    const v = new DataView(payload.buffer);
    for (let i = 0; i < count; i++) {
      const sectors = rng.chance(0.9) ? rng.int(0, Math.min(capacity, 16) + 1) : rng.pick([MAX_SEGMENT_SECTORS, MAX_SEGMENT_SECTORS + 1, 0xffff_ffff]);
      const at = pickSector(rng, capacity, Math.min(sectors, capacity));
      const flags = rng.chance(0.8) ? (type === T_WRITE_ZEROES && rng.chance(0.5) ? FLAG_UNMAP : 0) : rng.pick([FLAG_UNMAP, 2, 0x8000_0000, rng.u32()]);
      v.setBigUint64(16 * i, BigInt.asUintN(64, at), true);
      v.setUint32(16 * i + 8, sectors, true);
      v.setUint32(16 * i + 12, flags, true);
    }
  } else if (type !== T_FLUSH && rng.chance(0.3)) {
    payload = payloadBytes(rng, rng.int(1, 64)); // unsupported types may carry anything
  }

  const h = headerSpecs(rng, header(type, sector), stats);
  if (h.short) payload = new Uint8Array(0); // the header's missing bytes must not come from a payload
  // Readable part: header (+ payload). Writable part: data-in, then the status byte.
  const readable: BufferSpec[] = [...h.specs];
  if (payload.length) {
    if (h.shareWith && readable.length === 1) {
      const joined = new Uint8Array(16 + payload.length);
      joined.set((readable[0] as { data: Uint8Array }).data);
      joined.set(payload, 16);
      readable[0] = { data: joined };
      stats.count('header+data in one descriptor');
    } else {
      let p = 0;
      while (p < payload.length) {
        const n = rng.chance(0.7) ? payload.length - p : rng.int(1, payload.length - p);
        readable.push({ data: payload.subarray(p, p + n) });
        p += n;
      }
    }
  }
  const writable: BufferSpec[] = [];
  if (!noStatus) {
    if (dataInLen > 0 && rng.chance(0.3)) {
      writable.push({ writableLen: dataInLen + 1 });
      stats.count('status shares the data buffer');
    } else {
      let p = 0;
      while (p < dataInLen) {
        const n = rng.chance(0.7) ? dataInLen - p : rng.int(1, dataInLen - p);
        writable.push({ writableLen: n });
        p += n;
      }
      writable.push({ writableLen: type === T_OUT && rng.chance(0.1) ? rng.int(2, 16) : 1 });
    }
  } else {
    stats.count('status: missing');
    dataInLen = 0;
  }
  if (readable.length + writable.length === 0) readable.push({ data: new Uint8Array(0) });
  req.specs = [...readable, ...writable];
  req.what = `${name} (type ${type >>> 0}, sector ${sector}, capacity ${capacity}${readOnly ? ', read-only' : ''}, readable ` +
    `[${readable.map((b) => (b as { data: Uint8Array }).data.length)}], writable [${writable.map((b) => (b as { writableLen: number }).writableLen)}])`;

  // ---- the model ----
  if (noStatus) {
    req.statuses = [];
    req.usedLen = 0;
    return req;
  }
  const writableTotal = writable.reduce((s, b) => s + (b as { writableLen: number }).writableLen, 0);
  const dataIn = writableTotal - 1;
  if (h.short) {
    req.statuses = [IOERR];
    return req;
  }
  const fail = (status = IOERR) => { req.statuses = [status]; req.usedLen = 1; return req; };
  switch (type) {
    case T_IN: {
      if (!inRange(sector, dataIn, capacity)) return fail();
      req.usedLen = dataIn + 1;
      const at = Number(sector) * SECTOR;
      req.dataIn = disk.bytes.slice(at, at + dataIn);
      req.footprint = [[at, at + dataIn]];
      req.touchesFile = dataIn > 0;
      stats.count('model: IN ok');
      return req;
    }
    case T_OUT: {
      if (readOnly || !inRange(sector, payload.length, capacity)) return fail();
      const at = Number(sector) * SECTOR;
      req.effect = { kind: 'write', at, bytes: payload };
      req.footprint = [[at, at + payload.length]];
      req.writes = true;
      req.touchesFile = payload.length > 0;
      stats.count('model: OUT ok');
      return req;
    }
    case T_FLUSH:
      req.touchesFile = !readOnly;
      return req;
    case T_GET_ID: {
      const n = Math.min(20, dataIn);
      req.usedLen = n + 1;
      req.dataIn = serial.slice(0, n);
      return req;
    }
    case T_DISCARD:
    case T_WRITE_ZEROES: {
      if (readOnly) return fail();
      const count = payload.length / 16;
      const countOk = Number.isInteger(count) && count >= 1 && count <= MAX_SEGMENTS;
      const v = new DataView(payload.buffer);
      const segs = countOk ? Array.from({ length: count }, (_, i) => ({
        sector: v.getBigUint64(16 * i, true), sectors: v.getUint32(16 * i + 8, true), flags: v.getUint32(16 * i + 12, true),
      })) : [];
      const allowed = type === T_WRITE_ZEROES ? FLAG_UNMAP : 0;
      const badFlags = segs.some((s) => (s.flags & ~allowed) !== 0);
      const badRange = segs.some((s) => s.sectors > MAX_SEGMENT_SECTORS || !inRange(s.sector, s.sectors * SECTOR, capacity));
      if (!countOk) return fail(IOERR);
      if (badFlags) return fail(UNSUPP); // §5.2.6.2: unknown flags (and unmap on discard) are UNSUPP
      if (badRange) return fail(IOERR);
      const ranges = segs.map((s): [number, number] => [Number(s.sector) * SECTOR, (Number(s.sector) + s.sectors) * SECTOR]);
      req.effect = { kind: type === T_WRITE_ZEROES ? 'zero' : 'unknown', ranges };
      req.footprint = ranges;
      req.writes = true;
      req.touchesFile = ranges.some(([a, b]) => b > a);
      stats.count(`model: ${name} ok`);
      return req;
    }
    default:
      stats.count('model: UNSUPP');
      return fail(UNSUPP);
  }
}

function overlaps(a: [number, number][], b: [number, number][]): boolean {
  return a.some(([s, e]) => b.some(([t, f]) => s < f && t < e));
}

function applyEffect(disk: Disk, req: Request): void {
  const e = req.effect;
  if (!e) return;
  if (e.kind === 'write') {
    disk.bytes.set(e.bytes, e.at);
    disk.known.fill(1, e.at, e.at + e.bytes.length);
    return;
  }
  for (const [a, b] of e.ranges) {
    disk.bytes.fill(0, a, b);
    disk.known.fill(e.kind === 'zero' ? 1 : 0, a, b);
  }
}

function forget(disk: Disk, req: Request): void {
  for (const [a, b] of req.footprint) if (req.writes) disk.known.fill(0, a, b);
}

/** Takes used elements off a DriverQueue with a copy of each chain's writable bytes (the status is the last). */
class Completions {
  private consumed = 0;
  constructor(private readonly dq: DriverQueue) {}

  take(): { id: number; len: number; writable: Uint8Array }[] {
    const dq = this.dq;
    const pending = (dq.usedIdx() - this.consumed) & 0xffff;
    const copies: Uint8Array[] = [];
    for (let k = 0; k < pending; k++) {
      const at = dq.usedRing + 4 + 8 * (((this.consumed + k) & 0xffff) % dq.size);
      const id = new DataView(dq.raw(at, 4).slice().buffer).getUint32(0, true);
      try {
        copies.push(dq.readWritable(id));
      } catch {
        copies.push(new Uint8Array(0)); // not in flight: the check below names it
      }
    }
    const used = dq.takeUsed();
    this.consumed = (this.consumed + used.length) & 0xffff;
    return used.map((u, k) => ({ id: u.id, len: u.len, writable: copies[k]! }));
  }
}

export const blockTarget: FuzzTarget<Context> = {
  name: 'block',
  summary: 'virtio-blk requests of every type, bad ranges, short headers, missing status, failing disk, vs a spec model',
  budget: 20000,
  open: () => ({ memory: FuzzMemory.standard(RAM) }),
  async run(rng, { memory }, stats) {
    memory.clear();
    const readOnly = rng.chance(0.2);
    const fd = makeDevice(readOnly ? 'blk-ro' : 'blk', rng);
    const device = fd.device as BlockDevice;
    const file = fd.file as MemoryBlockFile;
    const capacity = file.size / SECTOR;
    file.data.set(PATTERN.subarray(0, file.size)); // every sector different
    const disk = new Disk(file.data);
    const serial = fd.serial;
    if (rng.chance(0.3)) { file.failureRate = rng.pick([0.05, 0.3, 1]); stats.count('disk: failing'); }
    const h = new FuzzHarness(device, memory, RAM, { queueSize: rng.pick([16, 64, 128]) });
    const dq = h.queues[0]!;
    const completions = new Completions(dq);
    let hostFailures = 0;
    try {
      const batches = rng.int(1, 4);
      for (let b = 0; b < batches; b++) {
        const batch = new Map<number, Request>();
        const busy: Request[] = [];
        const n = rng.int(1, 12);
        for (let i = 0; i < n; i++) {
          let req = makeRequest(rng, disk, capacity, readOnly, serial, stats);
          // Requests in flight together must not depend on each other's order.
          for (let tries = 0; tries < 5 && busy.some((o) => (o.writes || req.writes) && overlaps(o.footprint, req.footprint)); tries++) {
            req = makeRequest(rng, disk, capacity, readOnly, serial, stats);
          }
          if (busy.some((o) => (o.writes || req.writes) && overlaps(o.footprint, req.footprint))) continue;
          let head: number;
          try {
            head = dq.addChain(req.specs, { indirect: rng.chance(0.2) });
          } catch {
            break; // ring or buffer area full: send what we have
          }
          batch.set(head, req);
          busy.push(req);
        }
        h.kick(0);
        await file.releaseAll(rng);
        for (let k = 0; k < 4; k++) await Promise.resolve();
        check((h.status & STATUS_DEVICE_NEEDS_RESET) === 0, 'well-formed chains put the device in DEVICE_NEEDS_RESET');
        const done = completions.take();
        check(done.length === batch.size, `${batch.size} requests submitted, ${done.length} completed`);
        const failedBefore = hostFailures;
        for (const u of done) {
          const req = batch.get(u.id);
          check(req !== undefined, `completion for head ${u.id} that was not in flight`);
          batch.delete(u.id);
          if (req!.statuses.length === 0) {
            check(u.len === 0, `${req!.what} without a status byte: used len ${u.len}, expected 0`);
            continue;
          }
          const status = u.writable[u.writable.length - 1]!;
          const expected = req!.statuses[0]!;
          if (status !== expected) {
            // Only a failing backing file may turn an OK into IOERR.
            check(expected === OK && status === IOERR && req!.touchesFile && file.failureRate > 0,
              `${req!.what}: status ${status}, model says ${expected} (used len ${u.len})`);
            hostFailures++;
            forget(disk, req!);
            check(u.len === 1, `${req!.what} failed by the host: used len ${u.len}, expected 1`);
            stats.count('host failure -> IOERR');
            continue;
          }
          check(u.len === (status === OK ? req!.usedLen : 1), `${req!.what} status ${status}: used len ${u.len}, model ${req!.usedLen}`);
          if (status === OK && req!.dataIn) {
            const got = u.writable.subarray(0, req!.dataIn.length);
            const at = req!.footprint[0]?.[0] ?? 0;
            for (let i = 0; i < got.length; i++) {
              if (req!.type === T_IN && !disk.known[at + i]) continue;
              if (got[i] !== req!.dataIn[i]) throw new Error(`${req!.what}: data byte ${i} is ${got[i]}, model ${req!.dataIn[i]}`);
            }
          }
          if (status === OK) applyEffect(disk, req!);
          stats.count(`status: ${['OK', 'IOERR', 'UNSUPP'][status] ?? status}`);
        }
        check(device.stats.ioErrors === file.failures, `stats.ioErrors ${device.stats.ioErrors}, the disk failed ${file.failures} operations`);
        check(hostFailures - failedBefore <= file.failures, 'more IOERR from the host than host failures');
        memory.assertObserved();
      }
      // The disk holds exactly what the model says (where it knows).
      const equal = Buffer.from(file.data.buffer, file.data.byteOffset, file.size).equals(disk.bytes);
      for (let i = 0; !equal && i < disk.bytes.length; i++) {
        if (disk.known[i] && file.data[i] !== disk.bytes[i]) throw new Error(`disk byte ${i} is ${file.data[i]}, model ${disk.bytes[i]}`);
      }
      memory.assertClean();
    } finally {
      file.pending.splice(0);
      fd.close();
    }
  },
  checkCoverage(stats) {
    stats.require('model: IN ok', 'model: OUT ok', 'model: DISCARD ok', 'model: WRITE_ZEROES ok', 'model: UNSUPP',
      'status: OK', 'status: IOERR', 'status: UNSUPP', 'status: missing', 'header: short', 'header: split',
      'header+data in one descriptor', 'status shares the data buffer', 'host failure -> IOERR', 'type: GET_ID', 'type: FLUSH');
  },
};
