// The x86 port bus: dispatch by range with relative offsets, a floating bus for unclaimed
// reads, and the shared claim bitmap vCPU threads use to skip the main thread.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { PortBus } from '../../framework/vm/x86/port-bus.ts';

test('accesses reach the handler of their port with an offset from its first port', () => {
  const bus = new PortBus();
  const seen: string[] = [];
  bus.register(0x3f8, 8, {
    read: (offset, data) => { seen.push(`r${offset}/${data.length}`); data.fill(offset); },
    write: (offset, data) => { seen.push(`w${offset}=${data[0]}`); },
  }, 'uart');
  const data = new Uint8Array(1);
  assert.ok(bus.dispatch(0x3fd, false, data));
  assert.is(data[0], 5);
  bus.dispatch(0x3f8, true, Uint8Array.of(0x41));
  assert.equal(seen, ['r5/1', 'w0=65']);
});

test('unclaimed reads see all ones and are counted; writes vanish', () => {
  const bus = new PortBus();
  const data = new Uint8Array(2);
  assert.not.ok(bus.dispatch(0x92, false, data));
  assert.equal([...data], [0xff, 0xff]);
  assert.not.ok(bus.dispatch(0x80, true, Uint8Array.of(1)));
  assert.is(bus.unclaimed, 2);
});

test('the claim bitmap follows registration and removal; overlaps and out-of-range ports are refused', () => {
  const bus = new PortBus();
  const nop = { read() {}, write() {} };
  bus.register(0x60, 1, nop, 'kbd');
  bus.register(0x3f8, 8, nop, 'uart');
  assert.ok(bus.isClaimed(0x60) && bus.isClaimed(0x3f8) && bus.isClaimed(0x3ff));
  assert.not.ok(bus.isClaimed(0x61) || bus.isClaimed(0x3f7) || bus.isClaimed(0x400));
  assert.throws(() => bus.register(0x3fc, 8, nop, 'clash'), /overlap/);
  assert.throws(() => bus.register(0xfffe, 4, nop, 'wrap'), /0xffff/);
  bus.unregister(0x3f8);
  assert.not.ok(bus.isClaimed(0x3f8) || bus.isClaimed(0x3ff));
  assert.ok(bus.isClaimed(0x60));
});

test.run();
