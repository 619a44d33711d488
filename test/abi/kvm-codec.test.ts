// The KVM argument encoders/decoders and kvm_run decoding, checked against buffers laid out at
// gcc's offsets (test/abi/gcc-layout.ts), independently of the koffi offsets the code uses.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as kvm from '../../native/kvm.ts';
import { gccLayout } from './gcc-layout.ts';
import { KVM_GCC } from './recorded/kvm-gcc.ts';

const C = gccLayout(KVM_GCC);
const dv = (bytes: Uint8Array) => new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
const PAGE = 4096;

/** The vCPU mapping: kvm_run on page 0, the port-I/O data page after it (KVM_PIO_PAGE_OFFSET 1). */
function runMapping(pages = 3): { map: Uint8Array; view: DataView } {
  const map = new Uint8Array(pages * PAGE);
  return { map, view: dv(map) };
}

function setExit(view: DataView, reason: number, fields: Record<string, number | bigint>): void {
  C.write(view, 'kvm_run', 'exit_reason', reason);
  for (const [path, value] of Object.entries(fields)) C.write(view, 'kvm_run', path, value);
}

test('encodeKvmUserMemRegion places every field where gcc does', () => {
  const S = 'kvm_userspace_memory_region';
  const v = dv(kvm.encodeKvmUserMemRegion({
    slot: 2, flags: kvm.KVM_MEM_READONLY, guestPhysAddr: 0xfff0_0000, memorySize: 0x10_0000, userspaceAddr: 0x7f12_3456_7000n,
  }));
  assert.is(v.byteLength, C.size(S));
  assert.is(C.read(v, S, 'slot'), 2n);
  assert.is(C.read(v, S, 'flags'), 2n);
  assert.is(C.read(v, S, 'guest_phys_addr'), 0xfff0_0000n);
  assert.is(C.read(v, S, 'memory_size'), 0x10_0000n);
  assert.is(C.read(v, S, 'userspace_addr'), 0x7f12_3456_7000n);
  assert.throws(() => kvm.encodeKvmUserMemRegion({ slot: 0, flags: 4, guestPhysAddr: 0, memorySize: 0, userspaceAddr: 0n }), /unknown bits/);
});

test('encodeKvmIoeventfd: every width, datamatch / pio / deassign flags', () => {
  const S = 'kvm_ioeventfd';
  for (const len of [0, 1, 2, 4, 8]) {
    const v = dv(kvm.encodeKvmIoeventfd({ addr: 0xd000_0050, len, fd: 11 }));
    assert.is(v.byteLength, C.size(S));
    assert.is(C.read(v, S, 'len'), BigInt(len));
    assert.is(C.read(v, S, 'flags'), 0n);
  }
  const v = dv(kvm.encodeKvmIoeventfd({ addr: 0x604, len: 2, fd: 11, datamatch: 0xbeef, pio: true, deassign: true }));
  assert.is(C.read(v, S, 'addr'), 0x604n);
  assert.is(C.read(v, S, 'fd'), 11n);
  assert.is(C.read(v, S, 'datamatch'), 0xbeefn);
  assert.is(C.read(v, S, 'flags'),
    BigInt(kvm.KVM_IOEVENTFD_FLAG_DATAMATCH | kvm.KVM_IOEVENTFD_FLAG_PIO | kvm.KVM_IOEVENTFD_FLAG_DEASSIGN));
  assert.throws(() => kvm.encodeKvmIoeventfd({ addr: 0, len: 3, fd: 1 }), /len: 3/);
  assert.throws(() => kvm.encodeKvmIoeventfd({ addr: 0, len: 0, fd: 1, datamatch: 1 }), /len 0 with datamatch/);
  assert.throws(() => kvm.encodeKvmIoeventfd({ addr: 0, len: 2, fd: 1, datamatch: 0x1_0000 }), /does not fit in 2 byte/);
});

test('encodeKvmIrqfd: resamplefd sets RESAMPLE, deassign sets DEASSIGN', () => {
  const S = 'kvm_irqfd';
  const v = dv(kvm.encodeKvmIrqfd({ fd: 20, gsi: 5, resamplefd: 21 }));
  assert.is(v.byteLength, C.size(S));
  assert.is(C.read(v, S, 'fd'), 20n);
  assert.is(C.read(v, S, 'gsi'), 5n);
  assert.is(C.read(v, S, 'resamplefd'), 21n);
  assert.is(C.read(v, S, 'flags'), BigInt(kvm.KVM_IRQFD_FLAG_RESAMPLE));
  const off = dv(kvm.encodeKvmIrqfd({ fd: 20, gsi: 5, deassign: true }));
  assert.is(C.read(off, S, 'flags'), BigInt(kvm.KVM_IRQFD_FLAG_DEASSIGN));
  assert.throws(() => kvm.encodeKvmIrqfd({ fd: 20, gsi: 5, deassign: true, resamplefd: 21 }), /deassign/);
});

test('encodeKvmIrqLevel, encodeKvmPitConfig, kvm_translation', () => {
  const irq = dv(kvm.encodeKvmIrqLevel({ irq: 4, level: 1 }));
  assert.is(C.read(irq, 'kvm_irq_level', 'irq'), 4n);
  assert.is(C.read(irq, 'kvm_irq_level', 'level'), 1n);
  const pit = dv(kvm.encodeKvmPitConfig({ flags: kvm.KVM_PIT_SPEAKER_DUMMY }));
  assert.is(pit.byteLength, C.size('kvm_pit_config'));
  assert.is(C.read(pit, 'kvm_pit_config', 'flags'), 1n);

  const tr = kvm.encodeKvmTranslation(0xffff_ffff_8100_0000n);
  assert.is(C.read(dv(tr), 'kvm_translation', 'linear_address'), 0xffff_ffff_8100_0000n);
  C.write(dv(tr), 'kvm_translation', 'physical_address', 0x100_0000);
  C.write(dv(tr), 'kvm_translation', 'valid', 1);
  C.write(dv(tr), 'kvm_translation', 'usermode', 1);
  assert.equal(kvm.decodeKvmTranslation(tr), {
    linearAddress: 0xffff_ffff_8100_0000n, physicalAddress: 0x100_0000n, valid: true, writeable: false, usermode: true,
  });
});

test('kvm_regs: encode places each register at its gcc offset, decode inverts it', () => {
  const regs = Object.fromEntries(kvm.kvmRegNames.map((n, i) => [n, (BigInt(i + 1) << 56n) | BigInt(i)])) as kvm.KvmRegs;
  const bytes = kvm.encodeKvmRegs(regs);
  assert.is(bytes.length, C.size('kvm_regs'));
  for (const n of kvm.kvmRegNames) assert.is(C.read(dv(bytes), 'kvm_regs', n), regs[n], n);
  assert.equal(kvm.decodeKvmRegs(bytes), regs);
});

function segment(i: number): kvm.KvmSegment {
  return { base: BigInt(i) << 40n, limit: 0xfffff - i, selector: 8 * i, type: 11, present: 1, dpl: i & 3, db: 0, s: 1, l: 1, g: 1, avl: 0, unusable: 0 };
}

test('kvm_sregs: segments, descriptor tables, control registers and the bitmap round-trip at gcc offsets', () => {
  const sregs: kvm.KvmSregs = {
    cs: segment(1), ds: segment(2), es: segment(3), fs: segment(4), gs: segment(5), ss: segment(6), tr: segment(7), ldt: segment(8),
    gdt: { base: 0x500n, limit: 0x27 }, idt: { base: 0x520n, limit: 0xfff },
    cr0: 0x8000_0011n, cr2: 0n, cr3: 0x9000n, cr4: 0x20n, cr8: 0n, efer: 0x500n, apicBase: 0xfee0_0900n,
    interruptBitmap: [1n, 0n, 0n, 1n << 63n],
  };
  const bytes = kvm.encodeKvmSregs(sregs);
  const v = dv(bytes);
  assert.is(bytes.length, C.size('kvm_sregs'));
  assert.is(C.read(v, 'kvm_sregs', 'cs.selector'), 8n);
  assert.is(C.read(v, 'kvm_sregs', 'ldt.base'), 8n << 40n);
  assert.is(C.read(v, 'kvm_sregs', 'ss.dpl'), 2n);
  assert.is(C.read(v, 'kvm_sregs', 'tr.l'), 1n);
  assert.is(C.read(v, 'kvm_sregs', 'idt.limit'), 0xfffn);
  assert.is(C.read(v, 'kvm_sregs', 'efer'), 0x500n);
  assert.is(C.read(v, 'kvm_sregs', 'apic_base'), 0xfee0_0900n);
  assert.is(v.getBigUint64(C.offset('kvm_sregs', 'interrupt_bitmap') + 24, true), 1n << 63n);
  assert.equal(kvm.decodeKvmSregs(bytes), sregs);
  assert.throws(() => kvm.encodeKvmSregs({ ...sregs, interruptBitmap: [0n] }), /4/);
  assert.throws(() => kvm.encodeKvmSregs({ ...sregs, cs: { ...segment(1), dpl: 256 } }), /kvm_sregs.cs.dpl/);
});

test('kvm_fpu: the reset state sets fcw and mxcsr; the rest round-trips', () => {
  const reset = kvm.encodeKvmFpu({ fcw: 0x37f, mxcsr: 0x1f80 });
  assert.is(reset.length, C.size('kvm_fpu'));
  assert.is(C.read(dv(reset), 'kvm_fpu', 'fcw'), 0x37fn);
  assert.is(C.read(dv(reset), 'kvm_fpu', 'mxcsr'), 0x1f80n);
  const full: kvm.KvmFpu = {
    fpr: Uint8Array.from({ length: 128 }, (_, i) => i), fcw: 1, fsw: 2, ftwx: 3, lastOpcode: 4, lastIp: 5n, lastDp: 6n,
    xmm: Uint8Array.from({ length: 256 }, (_, i) => 255 - i), mxcsr: 7,
  };
  const bytes = kvm.encodeKvmFpu(full);
  assert.is(bytes[C.offset('kvm_fpu', 'xmm')], 255);
  assert.is(C.read(dv(bytes), 'kvm_fpu', 'last_dp'), 6n);
  assert.equal(kvm.decodeKvmFpu(bytes), full);
  assert.throws(() => kvm.encodeKvmFpu({ xmm: new Uint8Array(16) }), /xmm/);
});

test('kvm_msrs: header then entries at the flexible-array offset', () => {
  const bytes = kvm.encodeKvmMsrs([{ index: 0x1a0, data: 1n }, { index: 0xc000_0080, data: 0xd01n }]);
  const v = dv(bytes);
  const entries = C.flexOffset('kvm_msrs');
  assert.is(bytes.length, entries + 2 * C.size('kvm_msr_entry'));
  assert.is(C.read(v, 'kvm_msrs', 'nmsrs'), 2n);
  assert.is(v.getUint32(entries + C.size('kvm_msr_entry') + C.offset('kvm_msr_entry', 'index'), true), 0xc000_0080);
  assert.is(v.getBigUint64(entries + C.size('kvm_msr_entry') + C.offset('kvm_msr_entry', 'data'), true), 0xd01n);
  assert.equal(kvm.decodeKvmMsrs(bytes), [{ index: 0x1a0, data: 1n }, { index: 0xc000_0080, data: 0xd01n }]);
  assert.equal(kvm.decodeKvmMsrs(bytes, 1), [{ index: 0x1a0, data: 1n }], 'KVM_GET_MSRS may read fewer');
  assert.throws(() => kvm.decodeKvmMsrs(bytes.subarray(0, bytes.length - 1)), /exceed/);
});

test('kvm_cpuid2: alloc for KVM_GET_SUPPORTED_CPUID, encode for KVM_SET_CPUID2, decode', () => {
  const empty = kvm.allocKvmCpuid2(100);
  const entries = C.flexOffset('kvm_cpuid2');
  assert.is(empty.length, entries + 100 * C.size('kvm_cpuid_entry2'));
  assert.is(C.read(dv(empty), 'kvm_cpuid2', 'nent'), 100n);
  const list: kvm.KvmCpuidEntry2[] = [
    { function: 0, index: 0, flags: 0, eax: 0xd, ebx: 0x756e_6547, ecx: 0x6c65_746e, edx: 0x4965_6e69 },
    { function: 7, index: 1, flags: kvm.KVM_CPUID_FLAG_SIGNIFCANT_INDEX, eax: 1, ebx: 2, ecx: 3, edx: 0xffff_ffff },
  ];
  const bytes = kvm.encodeKvmCpuid2(list);
  const second = entries + C.size('kvm_cpuid_entry2');
  assert.is(dv(bytes).getUint32(second + C.offset('kvm_cpuid_entry2', 'index'), true), 1);
  assert.is(dv(bytes).getUint32(second + C.offset('kvm_cpuid_entry2', 'edx'), true), 0xffff_ffff);
  assert.equal(kvm.decodeKvmCpuid2(bytes), list);
  C.write(dv(bytes), 'kvm_cpuid2', 'nent', 3); // a hostile or stale nent
  assert.throws(() => kvm.decodeKvmCpuid2(bytes), /exceeds/);
});

test('readKvmExit: port OUT data is read from the I/O page at data_offset, without copying', () => {
  const { map, view } = runMapping();
  setExit(view, kvm.KVM_EXIT_IO, { 'io.direction': kvm.KVM_EXIT_IO_OUT, 'io.size': 1, 'io.port': 0x3f8, 'io.count': 3, 'io.data_offset': PAGE });
  map.set([0x68, 0x69, 0x0a], PAGE);
  const exit = kvm.readKvmExit(view);
  assert.is(kvm.readKvmExitReason(view), kvm.KVM_EXIT_IO);
  if (exit.kind !== 'io') throw new Error(`expected io, got ${exit.kind}`);
  assert.is(exit.direction, 'out');
  assert.is(exit.port, 0x3f8);
  assert.is(exit.size, 1);
  assert.is(exit.count, 3);
  assert.equal([...exit.data], [0x68, 0x69, 0x0a]);
  assert.is(exit.data.buffer, map.buffer);
});

test('port IN answers land at data_offset: writeKvmIoIn and writeKvmIoInValue', () => {
  const { map, view } = runMapping();
  setExit(view, kvm.KVM_EXIT_IO, { 'io.direction': kvm.KVM_EXIT_IO_IN, 'io.size': 2, 'io.port': 0x60, 'io.count': 1, 'io.data_offset': PAGE });
  const exit = kvm.readKvmExit(view);
  assert.is(exit.kind === 'io' && exit.direction, 'in');
  kvm.writeKvmIoInValue(view, 0xbeef);
  assert.equal([...map.subarray(PAGE, PAGE + 2)], [0xef, 0xbe]);
  assert.throws(() => kvm.writeKvmIoInValue(view, 0x1_0000), /kvm_run.io data/);
  kvm.writeKvmIoIn(view, Uint8Array.of(0x11));
  assert.equal([...map.subarray(PAGE, PAGE + 2)], [0x11, 0], 'short answer zero-filled');
  assert.throws(() => kvm.writeKvmIoIn(view, new Uint8Array(3)), /exceed/);
});

test('port I/O data outside the mapping is refused (the view must span KVM_GET_VCPU_MMAP_SIZE)', () => {
  const { view } = runMapping(1);
  setExit(view, kvm.KVM_EXIT_IO, { 'io.direction': kvm.KVM_EXIT_IO_OUT, 'io.size': 4, 'io.count': 1, 'io.data_offset': PAGE });
  assert.throws(() => kvm.readKvmExit(view), /outside the 4096-byte run mapping/);
});

test('readKvmExit: MMIO write and an MMIO read answered in place', () => {
  const { map, view } = runMapping();
  setExit(view, kvm.KVM_EXIT_MMIO, { 'mmio.phys_addr': 0xd000_0000, 'mmio.len': 8, 'mmio.is_write': 1 });
  map.set([1, 2, 3, 4, 5, 6, 7, 8], C.offset('kvm_run', 'mmio.data'));
  const w = kvm.readKvmExit(view);
  if (w.kind !== 'mmio') throw new Error(`expected mmio, got ${w.kind}`);
  assert.equal([w.physAddr, w.len, w.isWrite, [...w.data]], [0xd000_0000, 8, true, [1, 2, 3, 4, 5, 6, 7, 8]]);
  setExit(view, kvm.KVM_EXIT_MMIO, { 'mmio.len': 4, 'mmio.is_write': 0 });
  kvm.writeKvmMmioReadValue(view, 0x7472_6976);
  assert.is(C.read(view, 'kvm_run', 'mmio.data'), 0x7472_6976n, 'upper bytes cleared too');
  kvm.writeKvmMmioReadData(view, Uint8Array.of(9));
  assert.is(C.read(view, 'kvm_run', 'mmio.data'), 9n);
});

test('readKvmExit: system event, internal error, fail entry, unknown and simple exits', () => {
  const { view } = runMapping();
  const data = C.offset('kvm_run', 'system_event.data');
  setExit(view, kvm.KVM_EXIT_SYSTEM_EVENT, { 'system_event.type': kvm.KVM_SYSTEM_EVENT_RESET, 'system_event.ndata': 2 });
  view.setBigUint64(data, 0x11n, true);
  view.setBigUint64(data + 8, 0x22n, true);
  assert.equal(kvm.readKvmExit(view), { kind: 'system_event', reason: kvm.KVM_EXIT_SYSTEM_EVENT, type: 2, flags: 0x11n, data: [0x11n, 0x22n] });

  setExit(view, kvm.KVM_EXIT_INTERNAL_ERROR, { 'internal.suberror': kvm.KVM_INTERNAL_ERROR_EMULATION, 'internal.ndata': 1000 });
  const internal = kvm.readKvmExit(view);
  assert.is(internal.kind === 'internal_error' && internal.suberror, kvm.KVM_INTERNAL_ERROR_EMULATION);
  assert.is(internal.kind === 'internal_error' && internal.data.length, 16, 'ndata clamped to data[16]');

  setExit(view, kvm.KVM_EXIT_FAIL_ENTRY, { 'fail_entry.hardware_entry_failure_reason': 0x8000_0021n, 'fail_entry.cpu': 3 });
  assert.equal(kvm.readKvmExit(view), { kind: 'fail_entry', reason: 9, hardwareEntryFailureReason: 0x8000_0021n, cpu: 3 });

  setExit(view, kvm.KVM_EXIT_UNKNOWN, { 'hw.hardware_exit_reason': 0x30n });
  assert.equal(kvm.readKvmExit(view), { kind: 'unknown', reason: 0, hardwareExitReason: 0x30n });

  for (const [reason, kind] of [[kvm.KVM_EXIT_HLT, 'hlt'], [kvm.KVM_EXIT_SHUTDOWN, 'shutdown'], [kvm.KVM_EXIT_INTR, 'intr'],
    [kvm.KVM_EXIT_IRQ_WINDOW_OPEN, 'irq_window_open'], [kvm.KVM_EXIT_DEBUG, 'other']] as const) {
    setExit(view, reason, {});
    assert.equal(kvm.readKvmExit(view), { kind, reason });
  }
});

test('setKvmImmediateExit toggles immediate_exit only', () => {
  const { map, view } = runMapping();
  kvm.setKvmImmediateExit(view, true);
  assert.is(C.read(view, 'kvm_run', 'immediate_exit'), 1n);
  assert.is(C.read(view, 'kvm_run', 'request_interrupt_window'), 0n);
  kvm.setKvmImmediateExit(view, false);
  assert.ok(map.every((b) => b === 0));
});

test('a view shorter than kvm_run is refused', () => {
  assert.throws(() => kvm.readKvmExit(new DataView(new ArrayBuffer(C.size('kvm_run') - 1))), /shorter than 2352/);
});

test.run();
