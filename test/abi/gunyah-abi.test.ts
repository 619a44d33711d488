// Conformance of native/gunyah.ts with the Android-14 gunyah.h: every ioctl, #define, enum value,
// struct size/alignment and field offset/size, as the C compiler sees them. The checklist comes
// from the header text itself (test/abi/c-header.ts), so a header item the TypeScript side does
// not export, or does not compare, fails here. Without a compiler or header the recorded gcc
// table is the reference; whenever the compiler runs, the recorded table is checked against it.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { existsSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as gunyah from '../../native/gunyah.ts';
import { _IOC_NR, _IOC_SIZE, _IOC_TYPE } from '../../native/ioctl-codes.ts';
import { parseCHeader } from './c-header.ts';
import {
  diffTables, formatTable, itemKeys, itemsOfTable, parseTable, probeSource, runProbe, tsTable, type AbiItems,
} from './c-probe.ts';
import { isKoffiType, koffiPaths } from './koffi-layout.ts';
import { GUNYAH_GCC } from './recorded/gunyah-gcc.ts';

const repoRoot = fileURLToPath(new URL('../../', import.meta.url));
const headerPath = resolve(repoRoot, '../shared/seed/gunyah.h');
const recorded = parseTable(GUNYAH_GCC);
const mod = gunyah as unknown as Record<string, unknown>;

const header = existsSync(headerPath) ? parseCHeader(readFileSync(headerPath, 'utf8')) : undefined;
if (!header) console.log(`SKIP: gunyah.h parse (no ${headerPath}); the checklist comes from the recorded gcc table`);
const items: AbiItems = header
  ? { constants: [...header.defines, ...header.enumValues], structs: header.structs }
  : itemsOfTable(recorded);

const probe = header
  ? runProbe(probeSource([JSON.stringify(headerPath)], items))
  : { skip: `no ${headerPath}` };
if ('skip' in probe) console.log(`SKIP: gunyah.h C probe (${probe.skip}); checked against the recorded gcc table only`);
else if (process.env.RXVIRT_ABI_PRINT) console.log(formatTable(probe.table));

test('the checklist holds the whole Android-14 UAPI', () => {
  // A parser that silently found nothing would make every other test vacuous.
  assert.ok(items.constants.includes('GH_VM_ANDROID_SET_FW_CONFIG'), 'Android-only ioctls listed');
  assert.ok(items.constants.includes('GH_VCPU_EXIT_STATUS'), 'enum values listed');
  assert.ok(items.structs.get('gh_vcpu_run')?.includes('status.exit_info.reason'), 'union members listed');
  assert.is(items.structs.size, 9);
  assert.is(items.constants.length, 28);
});

test('the recorded gcc table covers exactly the items of gunyah.h', () => {
  assert.equal([...recorded.keys()].sort(), itemKeys(items).sort());
});

test('native/gunyah.ts exports every ioctl, constant, enum value, struct and field of the header', () => {
  const { missing } = tsTable(mod, items);
  assert.equal(missing, []);
});

test('native/gunyah.ts matches the recorded gcc values', () => {
  assert.equal(diffTables(recorded, tsTable(mod, items).table, 'native/gunyah.ts'), []);
});

if ('table' in probe) {
  test('native/gunyah.ts and the recorded table match the C compiler on gunyah.h', () => {
    assert.equal([...probe.table.keys()].sort(), itemKeys(items).sort(), 'the probe printed every item');
    assert.equal(diffTables(probe.table, tsTable(mod, items).table, 'native/gunyah.ts'), []);
    assert.equal(diffTables(probe.table, recorded, 'recorded table'), []);
  });
} else {
  test.skip('native/gunyah.ts and the recorded table match the C compiler on gunyah.h');
}

test('nothing exported under a header-style name is missing from the header', () => {
  const constants = new Set(items.constants);
  const extraConstants = Object.keys(mod).filter((k) => /^GH_[A-Z0-9_]+$/.test(k) && !constants.has(k));
  assert.equal(extraConstants, []);
  const types = Object.keys(mod).filter((k) => isKoffiType(mod[k]));
  assert.equal(types.filter((t) => !items.structs.has(t)), [], 'every exported koffi type is a header struct');
  for (const t of types) {
    const cPaths = items.structs.get(t) ?? [];
    assert.equal(koffiPaths(mod[t] as Parameters<typeof koffiPaths>[0]), cPaths, `${t}: the same fields in header order`);
  }
});

test('ioctl numbers carry the type, number and argument size of their header macro', () => {
  // Redundant with the table, but says what is wrong when a struct size changes.
  const cases: [number, number, number, number][] = [
    [gunyah.GH_VM_SET_USER_MEM_REGION, gunyah.GH_IOCTL_TYPE, 0x1, recorded.get('size gh_userspace_memory_region')!],
    [gunyah.GH_VM_ADD_FUNCTION, gunyah.GH_IOCTL_TYPE, 0x4, recorded.get('size gh_fn_desc')!],
    [gunyah.GH_VM_ANDROID_SET_FW_CONFIG, gunyah.GH_ANDROID_IOCTL_TYPE, 0x12, recorded.get('size gh_vm_firmware_config')!],
  ];
  for (const [request, type, nr, size] of cases) {
    assert.is(_IOC_TYPE(request), type);
    assert.is(_IOC_NR(request), nr);
    assert.is(_IOC_SIZE(request), size);
  }
});

test.run();
