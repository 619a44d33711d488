// No fd leaks: 50 connect/serve/disconnect cycles (half of them ending in a protocol
// fault while holding memory, kick, call and err fds) leave /proc/self/fd as it was,
// and the back-end holds no mapping or fd of a front-end that is gone.

import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { firstValueFrom } from 'rxjs';
import { RngDevice } from '../../devices/rng.ts';
import { VhostUserBackend } from '../../transports/vhost-user/backend.ts';
import { Request, encodeU64 } from '../../transports/vhost-user/protocol.ts';
import { DriverQueue } from '../support/driver-queue.ts';
import { FrontendMemory, VhostUserFrontend, nextCall, openFdCount } from '../support/vhost-user-frontend.ts';

const dir = mkdtempSync(join(tmpdir(), 'rxvirt-vu-leak-'));

/** Mappings of memfds named by the test front-end (ours plus the back-end's). */
function memfdMappings(): number {
  return readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes('rxvirt-test-guest')).length;
}

async function cycle(backend: VhostUserBackend, fault: boolean): Promise<void> {
  const mem = FrontendMemory.create(1 << 20);
  const f = VhostUserFrontend.connect(backend.socketPath);
  const gone = firstValueFrom(backend.disconnected$);
  await f.negotiate();
  await f.setMemTable([mem]);
  const q = new DriverQueue(mem.guest, { size: 8 });
  const ring = await f.setupRing(0, q, mem);
  const err = f.eventFd();
  f.send(Request.SET_VRING_ERR, encodeU64(0n), { fds: [err.fd] });
  q.addChain([{ writableLen: 32 }]);
  const called = nextCall(ring.call);
  ring.kick.signal();
  await called;
  assert.is(q.takeUsed().length, 1);
  if (fault) {
    f.send(Request.SET_VRING_CALL, encodeU64(0n), { fds: [mem.fd, mem.fd] }); // two fds: protocol fault
    assert.ok((await gone).error);
  } else {
    f.close();
    assert.not.ok((await gone).error);
  }
  f.close();
  mem.close();
}

test('50 connect/disconnect cycles leave no fds and no mappings behind', async () => {
  const backend = new VhostUserBackend(new RngDevice(), { socketPath: join(dir, 'leak.sock') });
  backend.listen();
  try {
    await cycle(backend, false); // warm-up: the runtime creates some fds lazily
    await cycle(backend, true);
    const fds = openFdCount();
    const maps = memfdMappings();
    assert.is(maps, 0);
    for (let i = 0; i < 50; i++) await cycle(backend, i % 2 === 1);
    assert.is(openFdCount(), fds, 'fd count after 50 cycles');
    assert.is(memfdMappings(), 0, 'no guest memory left mapped');
    assert.is(backend.connections, 52);
  } finally {
    await backend.close();
  }
  assert.not.ok(backend.isConnected);
});

test.after(() => rmSync(dir, { recursive: true, force: true }));

test.run();
