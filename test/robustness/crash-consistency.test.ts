// Crash consistency of the vhost-user block back-end: the `rxvirt vhost-user blk` CLI runs as
// a child, a front-end writes tagged data (every sector says which write put it there) and
// flushes, and the child is killed with SIGKILL at a random moment after some flushes were
// acknowledged, usually with writes still in flight. Then the image file must hold, for
// every sector, the last write whose FLUSH was acknowledged or a later write to that sector:
// zero lost acknowledged-and-flushed writes. (A write acknowledged but not yet flushed must
// be there too: the back-end only acknowledges after pwrite returned, and SIGKILL does not
// drop the page cache; that stronger check is counted separately.) RXVIRT_CRASH_TRIALS
// sets the number of trials (default 6); RXVIRT_SEED replays a run.

import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { DriverQueue } from '../support/driver-queue.ts';
import { Prng, chooseSeed } from '../support/prng.ts';
import { FrontendMemory, VhostUserFrontend, type RingSetup } from '../support/vhost-user-frontend.ts';

const SECTOR = 512;
const SECTORS = 2048; // 1 MiB image
const T_OUT = 1, T_FLUSH = 4;
const MAGIC = 0x72786372; // "rxcr"
const root = fileURLToPath(new URL('../..', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'rxvirt-crash-'));
const trials = Number(process.env.RXVIRT_CRASH_TRIALS ?? 6);
const seed = chooseSeed();

/** One write: sectors [sector, sector+count) tagged with its id. */
interface Write {
  id: number;
  sector: number;
  count: number;
  acked: boolean;
  /** Acknowledged before the submission of a FLUSH that was acknowledged. */
  durable: boolean;
}

function header(type: number, sector: number): Uint8Array {
  const h = new Uint8Array(16);
  const v = new DataView(h.buffer);
  v.setUint32(0, type, true);
  v.setBigUint64(8, BigInt(sector), true);
  return h;
}

function tagged(w: Write, trial: number): Uint8Array {
  const data = new Uint8Array(w.count * SECTOR);
  const v = new DataView(data.buffer);
  for (let k = 0; k < w.count; k++) {
    const at = k * SECTOR;
    v.setUint32(at, MAGIC, true);
    v.setUint32(at + 4, trial, true);
    v.setUint32(at + 8, w.id, true);
    v.setUint32(at + 12, w.sector + k, true);
    data.fill((w.id * 7 + k) & 0xff, at + 16, at + SECTOR);
  }
  return data;
}

/** Which write a sector of the image holds: its id, 0 for never written, -1 for anything else (foreign bytes). */
function sectorOwner(image: Uint8Array, sector: number, trial: number): number {
  const at = sector * SECTOR;
  const s = image.subarray(at, at + SECTOR);
  if (s.every((b) => b === 0)) return 0;
  const v = new DataView(s.buffer, s.byteOffset, SECTOR);
  if (v.getUint32(0, true) !== MAGIC || v.getUint32(4, true) !== trial || v.getUint32(12, true) !== sector) return -1;
  return v.getUint32(8, true); // (the caller checks the rest of the sector: no torn sector is acceptable)
}

interface Child {
  proc: ChildProcess;
  exit: Promise<void>;
  stderr: () => string;
}

async function startBackend(sock: string, image: string): Promise<Child> {
  const proc = spawn(process.execPath, [join(root, 'bin/rxvirt.js'), 'vhost-user', 'blk', '--socket', sock, '--image', image], {
    cwd: root, stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  proc.stderr!.on('data', (d) => { err += d; });
  const exit = new Promise<void>((r) => proc.once('exit', () => r()));
  const deadline = Date.now() + 30_000;
  while (!err.includes('serving on')) {
    if (proc.exitCode !== null || Date.now() > deadline) throw new Error(`back-end did not start: ${err}`);
    await new Promise((r) => setTimeout(r, 10));
  }
  return { proc, exit, stderr: () => err };
}

const outcome = { trials: 0, writes: 0, acked: 0, durable: 0, inFlightAtKill: 0, flushes: 0, lostDurable: 0, lostAcked: 0 };

async function trial(n: number, rng: Prng): Promise<void> {
  const image = join(dir, `disk${n}.img`);
  writeFileSync(image, new Uint8Array(SECTORS * SECTOR));
  const sock = join(dir, 'blk.sock'); // the same path every time: a stale socket from a killed back-end is replaced
  const child = await startBackend(sock, image);
  const mem = FrontendMemory.create(4 << 20);
  const f = VhostUserFrontend.connect(sock);
  const writes: Write[] = [];
  /** Sector -> id of the write in flight on it (no two writes in flight share a sector). */
  const busy = new Map<number, number>();
  const inFlight = new Map<number, { write?: Write; flush?: { ackedBefore: Write[] } }>();
  let nextId = 1;
  try {
    await f.negotiate();
    await f.setMemTable([mem]);
    const q = new DriverQueue(mem.guest, { size: 256 });
    const ring: RingSetup = await f.setupRing(0, q, mem);

    const collect = () => {
      for (const u of q.takeUsed()) {
        const req = inFlight.get(u.id);
        if (!req) continue;
        inFlight.delete(u.id);
        assert.is(u.written[0], 0, `trial ${n}: request ${u.id} status`);
        if (req.write) {
          req.write.acked = true;
          for (let k = 0; k < req.write.count; k++) busy.delete(req.write.sector + k);
          outcome.acked++;
        } else {
          for (const w of req.flush!.ackedBefore) w.durable = true;
          outcome.flushes++;
        }
      }
    };
    const submitWrite = () => {
      const count = rng.int(1, 16);
      const sector = rng.int(SECTORS - count);
      for (let k = 0; k < count; k++) if (busy.has(sector + k)) return;
      const w: Write = { id: nextId++, sector, count, acked: false, durable: false };
      for (let k = 0; k < count; k++) busy.set(sector + k, w.id);
      writes.push(w);
      outcome.writes++;
      inFlight.set(q.addChain([{ data: header(T_OUT, sector) }, { data: tagged(w, n) }, { writableLen: 1 }]), { write: w });
    };
    const submitFlush = () => {
      inFlight.set(q.addChain([{ data: header(T_FLUSH, 0) }, { writableLen: 1 }]), { flush: { ackedBefore: writes.filter((w) => w.acked) } });
    };
    const waitFor = async (done: () => boolean, ms = 5000) => {
      const deadline = Date.now() + ms;
      while (!done()) {
        if (Date.now() > deadline) throw new Error(`trial ${n}: the back-end stopped answering (${child.stderr()})`);
        await new Promise((r) => setTimeout(r, 1));
        collect();
      }
    };

    // Write, flush, and keep going; kill at a random moment after `flushesBeforeKill` acknowledged flushes.
    const flushesBeforeKill = rng.int(1, 3);
    let flushesAcked = 0;
    while (flushesAcked < flushesBeforeKill) {
      for (let i = rng.int(4, 24); i > 0 && q.freeDescriptors > 8; i--) submitWrite();
      ring.kick.signal();
      await waitFor(() => inFlight.size < 8);
      if (rng.chance(0.5)) {
        const before = outcome.flushes;
        await waitFor(() => writes.some((w) => w.acked)); // something for this flush to make durable
        submitFlush();
        ring.kick.signal();
        await waitFor(() => outcome.flushes > before);
        flushesAcked++;
      }
    }
    // More writes (and maybe a flush) in flight, then SIGKILL after a random delay.
    for (let i = rng.int(0, 40); i > 0 && q.freeDescriptors > 8; i--) submitWrite();
    if (rng.chance(0.5)) submitFlush();
    ring.kick.signal();
    const delay = rng.int(0, 4);
    if (delay > 0) await new Promise((r) => setTimeout(r, delay));
    child.proc.kill('SIGKILL');
    await child.exit;
    collect(); // completions published before the kill count as acknowledged
    outcome.inFlightAtKill += inFlight.size;
  } finally {
    if (child.proc.exitCode === null && child.proc.signalCode === null) child.proc.kill('SIGKILL');
    f.close();
    mem.close();
  }

  // The image after the crash.
  const disk = new Uint8Array(readFileSync(image));
  const bySector = new Map<number, Write[]>();
  for (const w of writes) for (let k = 0; k < w.count; k++) (bySector.get(w.sector + k) ?? bySector.set(w.sector + k, []).get(w.sector + k)!).push(w);
  for (let s = 0; s < SECTORS; s++) {
    const history = bySector.get(s) ?? [];
    const owner = sectorOwner(disk, s, n);
    assert.ok(owner >= 0, `trial ${n}: sector ${s} holds neither zeroes nor a whole tagged write`);
    if (owner > 0) {
      const w = writes[owner - 1]!;
      assert.ok(s >= w.sector && s < w.sector + w.count, `trial ${n}: sector ${s} holds write ${owner}, which never targeted it`);
      const k = s - w.sector;
      assert.ok(disk.subarray(s * SECTOR + 16, (s + 1) * SECTOR).every((b) => b === ((w.id * 7 + k) & 0xff)), `trial ${n}: sector ${s} torn`);
    }
    // Writes to one sector never overlap in flight, so history is in completion order.
    const position = owner === 0 ? -1 : history.findIndex((w) => w.id === owner);
    const lastDurable = history.reduce((p, w, i) => (w.durable ? i : p), -1);
    const lastAcked = history.reduce((p, w, i) => (w.acked ? i : p), -1);
    if (position < lastDurable) {
      outcome.lostDurable++;
      assert.unreachable(`trial ${n} (seed ${seed}): sector ${s} lost flushed write ${history[lastDurable]!.id} (holds ${owner || 'zeroes'})`);
    }
    if (position < lastAcked) outcome.lostAcked++;
  }
  outcome.durable += writes.filter((w) => w.durable).length;
  outcome.trials++;
}

test(`SIGKILL at random moments after flushes: no acknowledged-and-flushed write is lost (${trials} trials)`, async () => {
  console.log(`crash consistency: seed ${seed} (RXVIRT_SEED=${seed} replays)`);
  const rng = new Prng(seed);
  for (let n = 1; n <= trials; n++) await trial(n, rng);
  console.log(`crash consistency: ${JSON.stringify(outcome)}`);
  assert.is(outcome.lostDurable, 0, 'flushed writes lost');
  assert.is(outcome.lostAcked, 0, 'acknowledged writes lost (pwrite had returned before the acknowledgement)');
  assert.ok(outcome.durable > 0, 'some writes were flushed before a kill');
  assert.ok(outcome.inFlightAtKill > 0, 'some kills landed with requests in flight');
});

test.after(() => rmSync(dir, { recursive: true, force: true }));

test.run();
