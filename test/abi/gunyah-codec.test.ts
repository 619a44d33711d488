// The Gunyah argument encoders and run-page decoders, checked byte-for-byte against buffers laid
// out at gcc's offsets (test/abi/gcc-layout.ts), not at the offsets the code under test uses.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as gh from '../../native/gunyah.ts';
import { gccLayout } from './gcc-layout.ts';
import { GUNYAH_GCC } from './recorded/gunyah-gcc.ts';

const C = gccLayout(GUNYAH_GCC);
const dv = (bytes: Uint8Array) => new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);

/** A run page as the kernel maps it: one 4 KiB page with gh_vcpu_run at its start. */
function runPage(): { page: Uint8Array; view: DataView } {
  const page = new Uint8Array(4096);
  return { page, view: dv(page) };
}

test('encodeUserMemRegion places every field where gcc does, 64-bit values exactly', () => {
  const bytes = gh.encodeUserMemRegion({
    label: 7, flags: gh.GH_MEM_ALLOW_READ | gh.GH_MEM_ALLOW_EXEC,
    guestPhysAddr: 0x8000_0000, memorySize: 0x1_0000_0000, userspaceAddr: 0x7fff_dead_beef_f000n,
  });
  const S = 'gh_userspace_memory_region';
  assert.is(bytes.length, C.size(S));
  const v = dv(bytes);
  assert.is(C.read(v, S, 'label'), 7n);
  assert.is(C.read(v, S, 'flags'), 5n);
  assert.is(C.read(v, S, 'guest_phys_addr'), 0x8000_0000n);
  assert.is(C.read(v, S, 'memory_size'), 0x1_0000_0000n);
  assert.is(C.read(v, S, 'userspace_addr'), 0x7fff_dead_beef_f000n);
});

test('encodeUserMemRegion refuses values the C fields cannot hold', () => {
  const ok = { label: 0, flags: 7, guestPhysAddr: 0, memorySize: 4096, userspaceAddr: 4096n };
  assert.throws(() => gh.encodeUserMemRegion({ ...ok, flags: 8 }), /unknown bits/);
  assert.throws(() => gh.encodeUserMemRegion({ ...ok, label: 2 ** 32 }), /label/);
  assert.throws(() => gh.encodeUserMemRegion({ ...ok, guestPhysAddr: -4096 }), /guest_phys_addr/);
  assert.throws(() => gh.encodeUserMemRegion({ ...ok, memorySize: 0.5 }), /memory_size/);
  assert.throws(() => gh.encodeUserMemRegion({ ...ok, userspaceAddr: 1n << 64n }), /userspace_addr/);
});

test('encodeDtbConfig and encodeFwConfig carry address and size', () => {
  for (const [encode, S] of [[gh.encodeDtbConfig, 'gh_vm_dtb_config'], [gh.encodeFwConfig, 'gh_vm_firmware_config']] as const) {
    const bytes = encode({ guestPhysAddr: 0x8020_0000n, size: 2 * 1024 * 1024 });
    assert.is(bytes.length, C.size(S));
    assert.is(C.read(dv(bytes), S, 'guest_phys_addr'), 0x8020_0000n);
    assert.is(C.read(dv(bytes), S, 'size'), 0x20_0000n);
  }
});

test('encodeFnDesc stores a full 64-bit argument pointer and bounds arg_size', () => {
  const ptr = 0xffff_8000_1234_5678n; // beyond 2^53: must not go through a JS number
  const bytes = gh.encodeFnDesc(gh.GH_FN_IOEVENTFD, ptr, C.size('gh_fn_ioeventfd_arg'));
  assert.is(bytes.length, C.size('gh_fn_desc'));
  assert.is(C.read(dv(bytes), 'gh_fn_desc', 'type'), BigInt(gh.GH_FN_IOEVENTFD));
  assert.is(C.read(dv(bytes), 'gh_fn_desc', 'arg_size'), 32n);
  assert.is(C.read(dv(bytes), 'gh_fn_desc', 'arg'), ptr);
  assert.ok(gh.encodeFnDesc(gh.GH_FN_VCPU, 1n, gh.GH_FN_MAX_ARG_SIZE));
  assert.throws(() => gh.encodeFnDesc(gh.GH_FN_VCPU, 1n, gh.GH_FN_MAX_ARG_SIZE + 1), /arg_size/);
  assert.throws(() => gh.encodeFnDesc(gh.GH_FN_VCPU, 1n, 0), /arg_size/);
  assert.throws(() => gh.encodeFnDesc(9, 1n, 4), /unknown function type 9/);
});

test('encodeVcpuArg and encodeIrqfdArg', () => {
  const vcpu = gh.encodeVcpuArg({ id: 3 });
  assert.is(vcpu.length, C.size('gh_fn_vcpu_arg'));
  assert.is(C.read(dv(vcpu), 'gh_fn_vcpu_arg', 'id'), 3n);

  const S = 'gh_fn_irqfd_arg';
  const level = gh.encodeIrqfdArg({ fd: 12, label: 5, level: true });
  assert.is(level.length, C.size(S));
  assert.is(C.read(dv(level), S, 'fd'), 12n);
  assert.is(C.read(dv(level), S, 'label'), 5n);
  assert.is(C.read(dv(level), S, 'flags'), BigInt(gh.GH_IRQFD_FLAGS_LEVEL));
  assert.is(C.read(dv(gh.encodeIrqfdArg({ fd: 12, label: 5 })), S, 'flags'), 0n);
  assert.throws(() => gh.encodeIrqfdArg({ fd: -1, label: 0 }), /fd/);
});

test('encodeIoeventfdArg: DATAMATCH is bit 0 and set only with a datamatch value', () => {
  const S = 'gh_fn_ioeventfd_arg';
  const match = dv(gh.encodeIoeventfdArg({ addr: 0xd000_0050, len: 4, fd: 9, datamatch: 0xffff_fffe }));
  assert.is(C.read(match, S, 'datamatch'), 0xffff_fffen);
  assert.is(C.read(match, S, 'addr'), 0xd000_0050n);
  assert.is(C.read(match, S, 'len'), 4n);
  assert.is(C.read(match, S, 'fd'), 9n);
  assert.is(C.read(match, S, 'flags'), 1n); // not 1 << 1 (a known VMM bug the driver answers EINVAL)
  const any = dv(gh.encodeIoeventfdArg({ addr: 0xd000_0050, len: 0, fd: 9 }));
  assert.is(C.read(any, S, 'flags'), 0n);
  assert.is(C.read(any, S, 'len'), 0n);
});

test('encodeIoeventfdArg refuses what the driver would answer EINVAL (or never match)', () => {
  assert.throws(() => gh.encodeIoeventfdArg({ addr: 0, len: 3, fd: 1 }), /len: 3/);
  assert.throws(() => gh.encodeIoeventfdArg({ addr: 0, len: 0, fd: 1, datamatch: 0 }), /len 0 with datamatch/);
  assert.throws(() => gh.encodeIoeventfdArg({ addr: 0, len: 1, fd: 1, datamatch: 0x100 }), /does not fit in 1 byte/);
  assert.throws(() => gh.encodeIoeventfdArg({ addr: 0, len: 4, fd: -1 }), /fd/);
  for (const len of [1, 2, 4, 8]) assert.ok(gh.encodeIoeventfdArg({ addr: 0x1000, len, fd: 1, datamatch: 0xff }));
  const wide = dv(gh.encodeIoeventfdArg({ addr: 0, len: 8, fd: 1, datamatch: 0xffff_ffff_ffff_ffffn }));
  assert.is(C.read(wide, 'gh_fn_ioeventfd_arg', 'datamatch'), 0xffff_ffff_ffff_ffffn);
});

test('readGhExit decodes an MMIO write; data is a view into the run page', () => {
  const { page, view } = runPage();
  C.write(view, 'gh_vcpu_run', 'exit_reason', gh.GH_VCPU_EXIT_MMIO);
  C.write(view, 'gh_vcpu_run', 'mmio.phys_addr', 0x1_d000_0070);
  C.write(view, 'gh_vcpu_run', 'mmio.len', 4);
  C.write(view, 'gh_vcpu_run', 'mmio.is_write', 1);
  page.set([0xef, 0xbe, 0xad, 0xde], C.offset('gh_vcpu_run', 'mmio.data'));
  const exit = gh.readGhExit(view);
  assert.is(gh.readGhExitReason(view), gh.GH_VCPU_EXIT_MMIO);
  if (exit.kind !== 'mmio') throw new Error(`expected mmio, got ${exit.kind}`);
  assert.is(exit.physAddr, 0x1_d000_0070);
  assert.is(exit.len, 4);
  assert.is(exit.isWrite, true);
  assert.equal([...exit.data], [0xef, 0xbe, 0xad, 0xde]);
  assert.is(exit.data.buffer, page.buffer, 'zero-copy');
});

test('an MMIO read is answered in place by writeGhMmioReadData / writeGhMmioReadValue', () => {
  const { page, view } = runPage();
  C.write(view, 'gh_vcpu_run', 'exit_reason', gh.GH_VCPU_EXIT_MMIO);
  C.write(view, 'gh_vcpu_run', 'mmio.len', 2);
  page.fill(0xaa, C.offset('gh_vcpu_run', 'mmio.data'), C.offset('gh_vcpu_run', 'mmio.data') + 8);
  const exit = gh.readGhExit(view);
  assert.is(exit.kind === 'mmio' && exit.isWrite, false);
  gh.writeGhMmioReadData(view, Uint8Array.of(0x34, 0x12));
  assert.is(C.read(view, 'gh_vcpu_run', 'mmio.data'), 0x1234n, 'stale bytes cleared');
  gh.writeGhMmioReadValue(view, 0x1_2345_6789);
  assert.is(C.read(view, 'gh_vcpu_run', 'mmio.data'), 0x1_2345_6789n);
  assert.throws(() => gh.writeGhMmioReadData(view, new Uint8Array(9)), /do not fit in 8/);
});

test('readGhExit decodes a VM status exit with its exit info', () => {
  const { page, view } = runPage();
  C.write(view, 'gh_vcpu_run', 'exit_reason', gh.GH_VCPU_EXIT_STATUS);
  C.write(view, 'gh_vcpu_run', 'status.status', gh.GH_VM_STATUS_EXITED);
  C.write(view, 'gh_vcpu_run', 'status.exit_info.type', 2); // SYSTEM_RESET
  C.write(view, 'gh_vcpu_run', 'status.exit_info.reason_size', 4);
  page.set([1, 2, 3, 4, 5], C.offset('gh_vcpu_run', 'status.exit_info.reason'));
  const exit = gh.readGhExit(view);
  if (exit.kind !== 'status') throw new Error(`expected status, got ${exit.kind}`);
  assert.is(exit.status, gh.GH_VM_STATUS_EXITED);
  assert.is(exit.exitInfo.type, 2);
  assert.is(exit.exitInfo.reasonSize, 4);
  assert.equal([...exit.exitInfo.reason], [1, 2, 3, 4]);
});

test('readGhExit clamps lengths the page cannot hold', () => {
  const { view } = runPage();
  C.write(view, 'gh_vcpu_run', 'exit_reason', gh.GH_VCPU_EXIT_STATUS);
  C.write(view, 'gh_vcpu_run', 'status.exit_info.reason_size', 0xffff_ffff);
  const status = gh.readGhExit(view);
  assert.is(status.kind === 'status' && status.exitInfo.reason.length, gh.GH_VM_MAX_EXIT_REASON_SIZE);
  C.write(view, 'gh_vcpu_run', 'exit_reason', gh.GH_VCPU_EXIT_MMIO);
  C.write(view, 'gh_vcpu_run', 'mmio.len', 4096);
  const mmio = gh.readGhExit(view);
  assert.is(mmio.kind === 'mmio' && mmio.data.length, 8);
});

test('an MMIO address beyond 2^53 stays beyond 2^53 (outside any guest memory)', () => {
  const { view } = runPage();
  C.write(view, 'gh_vcpu_run', 'exit_reason', gh.GH_VCPU_EXIT_MMIO);
  C.write(view, 'gh_vcpu_run', 'mmio.phys_addr', 0xffff_ffff_ffff_f000n);
  const exit = gh.readGhExit(view);
  assert.ok(exit.kind === 'mmio' && exit.physAddr >= 2 ** 53);
});

test('unknown exit reasons are reported, not misread as MMIO', () => {
  const { view } = runPage();
  C.write(view, 'gh_vcpu_run', 'exit_reason', 7);
  assert.equal(gh.readGhExit(view), { kind: 'unknown', exitReason: 7 });
});

test('setGhImmediateExit toggles the byte the kernel polls', () => {
  const { view } = runPage();
  gh.setGhImmediateExit(view, true);
  assert.is(C.read(view, 'gh_vcpu_run', 'immediate_exit'), 1n);
  gh.setGhImmediateExit(view, false);
  assert.is(C.read(view, 'gh_vcpu_run', 'immediate_exit'), 0n);
});

test('a view smaller than gh_vcpu_run is refused', () => {
  const view = new DataView(new ArrayBuffer(C.size('gh_vcpu_run') - 1));
  assert.throws(() => gh.readGhExit(view), /shorter than 40/);
  assert.throws(() => gh.setGhImmediateExit(view, true), /shorter/);
});

test.run();
