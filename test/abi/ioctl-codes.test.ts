// native/ioctl-codes.ts against the kernel's own <linux/ioctl.h> macros, over a grid of
// directions, types, numbers and sizes (edges included: bit 31 set, 14-bit size limit).
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import {
  _IO, _IOC, _IOC_DIR, _IOC_NR, _IOC_SIZE, _IOC_TYPE, _IOR, _IOW, _IOWR, _IOC_READ, _IOC_WRITE,
} from '../../native/ioctl-codes.ts';
import { formatTable, parseTable, runProbe } from './c-probe.ts';

const DIRS = [0, 1, 2, 3];
const TYPES = [0, 0x41, 0x47, 0xae, 0xff];
const NRS = [0, 1, 0x12, 0x80, 0xff];
const SIZES = [0, 1, 8, 40, 0x1000, 0x3fff];
const MACRO_SIZES = SIZES.filter((s) => s > 0); // _IOR(t, n, char[size]) needs a non-empty type

function probeSource(): string {
  const lines = ['#include <linux/ioctl.h>', '#include <stdio.h>',
    // The kernel takes the request as unsigned int; plain _IOC() is a signed int expression.
    '#define P(key, v) printf("%s %u\\n", key, (unsigned int)(v))', 'int main(void) {'];
  for (const d of DIRS) for (const t of TYPES) for (const n of NRS) for (const s of SIZES) {
    lines.push(`  P("ioc ${d}.${t}.${n}.${s}", _IOC(${d}, ${t}, ${n}, ${s}));`);
  }
  for (const t of TYPES) for (const n of NRS) {
    lines.push(`  P("io ${t}.${n}", _IO(${t}, ${n}));`);
    for (const s of MACRO_SIZES) {
      for (const m of ['IOR', 'IOW', 'IOWR']) lines.push(`  P("${m.toLowerCase()} ${t}.${n}.${s}", _${m}(${t}, ${n}, char[${s}]));`);
    }
  }
  lines.push('  return 0;', '}');
  return lines.join('\n');
}

const probe = runProbe(probeSource());
if ('skip' in probe) console.log(`SKIP: <linux/ioctl.h> C probe (${probe.skip}); checked against recorded values only`);
else if (process.env.RXVIRT_ABI_PRINT) console.log(formatTable(probe.table));

if ('table' in probe) {
  test('_IOC/_IO/_IOR/_IOW/_IOWR equal the kernel macros over the whole grid', () => {
    const bad: string[] = [];
    for (const [key, expected] of probe.table) {
      const [kind, args] = key.split(' ') as [string, string];
      const [a, b, c, d] = args.split('.').map(Number) as [number, number, number, number];
      const got = kind === 'ioc' ? _IOC(a, b, c, d)
        : kind === 'io' ? _IO(a, b)
        : kind === 'ior' ? _IOR(a, b, c)
        : kind === 'iow' ? _IOW(a, b, c)
        : _IOWR(a, b, c);
      if (got !== expected) bad.push(`${key}: ${got} != ${expected}`);
    }
    assert.is(probe.table.size, DIRS.length * TYPES.length * NRS.length * SIZES.length + TYPES.length * NRS.length * (1 + 3 * MACRO_SIZES.length));
    assert.equal(bad, []);
  });
} else {
  test.skip('_IOC/_IO/_IOR/_IOW/_IOWR equal the kernel macros over the whole grid');
}

test('recorded kernel values (gcc, <linux/ioctl.h>) for well-known requests', () => {
  const recorded = parseTable(`
    kvm KVM_RUN 0xae80
    kvm KVM_GET_REGS 0x8090ae81
    kvm KVM_GET_SUPPORTED_CPUID 0xc008ae05
    gh GH_VM_SET_USER_MEM_REGION 0x40204701
    max _IOWR 0xffffffff
  `);
  assert.is(_IO(0xae, 0x80), recorded.get('kvm KVM_RUN'));
  assert.is(_IOR(0xae, 0x81, 144), recorded.get('kvm KVM_GET_REGS'));
  assert.is(_IOWR(0xae, 0x05, 8), recorded.get('kvm KVM_GET_SUPPORTED_CPUID'));
  assert.is(_IOW('G', 0x01, 32), recorded.get('gh GH_VM_SET_USER_MEM_REGION'));
  assert.is(_IOWR(0xff, 0xff, 0x3fff), recorded.get('max _IOWR'));
});

test('requests with the read bit are positive 32-bit numbers, not negative ints', () => {
  const request = _IOR('G', 1, 8);
  assert.ok(request > 0x7fff_ffff && request <= 0xffff_ffff, String(request));
  assert.is(_IOC_DIR(request), _IOC_READ);
});

test('a one-character string type is its character code', () => {
  assert.is(_IOW('G', 4, 16), _IOW(0x47, 4, 16));
  assert.is(_IO('A', 0x11), _IO(65, 0x11));
});

test('the field accessors take a request apart again', () => {
  const request = _IOWR(0xae, 0x85, 24);
  assert.is(_IOC_DIR(request), _IOC_READ | _IOC_WRITE);
  assert.is(_IOC_TYPE(request), 0xae);
  assert.is(_IOC_NR(request), 0x85);
  assert.is(_IOC_SIZE(request), 24);
});

test('fields that do not fit are refused instead of spilling into the next field', () => {
  assert.throws(() => _IOW('G', 1, 0x4000), /size 16384 does not fit in 14 bits/);
  assert.throws(() => _IO('G', 256), /nr 256/);
  assert.throws(() => _IO(256, 0), /type 256/);
  assert.throws(() => _IO('GG', 0), /one character/);
  assert.throws(() => _IOC(4, 'G', 0, 0), /dir 4/);
  assert.throws(() => _IOW('G', 1, -1), /size -1/);
  assert.throws(() => _IOW('G', 1, 1.5), /size 1.5/);
});

test.run();
