// Conformance of native/kvm.ts with <linux/kvm.h> on x86_64: every exported KVM* constant and
// ioctl, and every exported struct's size, alignment and field offsets/sizes/signedness, as the
// C compiler sees them; the flexible arrays after kvm_msrs / kvm_cpuid2 too. The koffi structs
// must also carry exactly the header's fields (kvm_run: a subset of its exit union).
// Without a compiler, header or x86_64 host, the recorded gcc table is the reference.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import koffi from 'koffi';
import * as kvm from '../../native/kvm.ts';
import { parseCHeader } from './c-header.ts';
import {
  diffTables, formatTable, itemKeys, parseTable, preprocess, probeSource, runProbe, tsTable,
  type AbiItems, type AbiTable,
} from './c-probe.ts';
import { isKoffiType, koffiPaths } from './koffi-layout.ts';
import { KVM_GCC } from './recorded/kvm-gcc.ts';

const mod = kvm as unknown as Record<string, unknown>;
const recorded = parseTable(KVM_GCC);

const structNames = Object.keys(mod).filter((k) => isKoffiType(mod[k]));
const items: AbiItems = {
  constants: Object.keys(mod).filter((k) => /^KVM[A-Z0-9_]*$/.test(k) && typeof mod[k] === 'number'),
  structs: new Map(structNames.map((s) => [s, koffiPaths(mod[s] as Parameters<typeof koffiPaths>[0])])),
};

/** Flexible array members the koffi header types leave out: entries follow the header. */
const FLEX = [
  { struct: 'kvm_msrs', entry: kvm.kvm_msr_entry, header: kvm.kvm_msrs },
  { struct: 'kvm_cpuid2', entry: kvm.kvm_cpuid_entry2, header: kvm.kvm_cpuid2 },
];
const flexProbe = FLEX.flatMap(({ struct }) => [
  { key: `flexoffset ${struct}.entries`, expr: `offsetof(struct ${struct}, entries)` },
  { key: `flexsize ${struct}.entries`, expr: `sizeof(((struct ${struct} *)0)->entries[0])` },
]);

function expectedKeys(): string[] {
  return [...itemKeys(items), ...flexProbe.map((f) => f.key)].sort();
}

function typescriptTable(): { table: AbiTable; missing: string[] } {
  const result = tsTable(mod, items);
  for (const { struct, entry, header } of FLEX) {
    result.table.set(`flexoffset ${struct}.entries`, koffi.sizeof(header));
    result.table.set(`flexsize ${struct}.entries`, koffi.sizeof(entry));
  }
  return result;
}

const INCLUDES = ['<linux/kvm.h>'];
const notX64 = process.arch === 'x64' ? undefined : `host is ${process.arch}, the definitions are x86_64`;
const probe = notX64 ? { skip: notX64 } : runProbe(probeSource(INCLUDES, items, flexProbe));
if ('skip' in probe) console.log(`SKIP: <linux/kvm.h> C probe (${probe.skip}); checked against the recorded gcc table only`);
else if (process.env.RXVIRT_ABI_PRINT) console.log(formatTable(probe.table));
const headerText = notX64 ? { skip: notX64 } : preprocess(INCLUDES);
if ('skip' in headerText) console.log(`SKIP: <linux/kvm.h> field lists (${headerText.skip})`);

test('the exports cover the runtime UAPI (and the checklist is not empty)', () => {
  for (const name of ['KVM_RUN', 'KVM_IOEVENTFD', 'KVM_IRQFD', 'KVM_SET_CPUID2', 'KVM_EXIT_MMIO', 'KVM_CAP_IMMEDIATE_EXIT']) {
    assert.ok(items.constants.includes(name), name);
  }
  for (const name of ['kvm_run', 'kvm_sregs', 'kvm_ioeventfd', 'kvm_irqfd', 'kvm_cpuid_entry2', 'kvm_translation']) {
    assert.ok(items.structs.has(name), name);
  }
  assert.ok(items.structs.get('kvm_run')!.includes('system_event.data'), 'union members are compared');
});

test('the recorded gcc table covers exactly what native/kvm.ts exports', () => {
  assert.equal([...recorded.keys()].sort(), expectedKeys());
});

test('native/kvm.ts matches the recorded gcc values', () => {
  const { table, missing } = typescriptTable();
  assert.equal(missing, []);
  assert.equal(diffTables(recorded, table, 'native/kvm.ts'), []);
});

if ('table' in probe) {
  test('native/kvm.ts and the recorded table match the C compiler on <linux/kvm.h>', () => {
    assert.equal([...probe.table.keys()].sort(), expectedKeys(), 'the probe printed every item');
    assert.equal(diffTables(probe.table, typescriptTable().table, 'native/kvm.ts'), []);
    assert.equal(diffTables(probe.table, recorded, 'recorded table'), []);
  });
} else {
  test.skip('native/kvm.ts and the recorded table match the C compiler on <linux/kvm.h>');
}

if ('text' in headerText) {
  test('koffi structs carry exactly the header fields, in order (kvm_run: a subset)', () => {
    const header = parseCHeader(headerText.text);
    for (const name of structNames) {
      const cPaths = header.structs.get(name);
      assert.ok(cPaths, `struct ${name} exists in <linux/kvm.h>`);
      const ours = items.structs.get(name)!;
      if (name === 'kvm_run') {
        assert.equal(ours.filter((p) => !cPaths.includes(p)), [], 'kvm_run: every koffi field is a header field');
        continue;
      }
      const isFlex = FLEX.some((f) => f.struct === name);
      const expected = isFlex ? cPaths.filter((p) => !/^(__empty_entries|entries)(\.|$)/.test(p)) : cPaths;
      assert.equal(ours, expected, name);
    }
  });
} else {
  test.skip('koffi structs carry exactly the header fields, in order (kvm_run: a subset)');
}

test.run();
