// Reads layouts back out of koffi types in C terms: member paths as C spells them (a C anonymous
// union is the koffi member `u`, invisible in C paths), with offset and size, so the ABI tests
// can compare them with what the compiler says about the same paths.
import koffi, { type TypeObject } from 'koffi';

/** The koffi member name that stands for a C anonymous union/struct. */
export const ANONYMOUS = 'u';

type Members = NonNullable<TypeObject['members']>;

function membersOf(type: TypeObject): Members | undefined {
  const info = koffi.type(type);
  return info.primitive === 'Record' || info.primitive === 'Union' ? info.members : undefined;
}

export function isKoffiType(value: unknown): value is TypeObject {
  if (value === null || typeof value !== 'object') return false;
  try {
    koffi.type(value as TypeObject);
    return true;
  } catch {
    return false;
  }
}

/** Finds a C member name in `type`, looking through anonymous members like the C compiler does. */
function findMember(type: TypeObject, name: string): { offset: number; type: TypeObject } | undefined {
  const members = membersOf(type);
  if (!members) return undefined;
  const direct = members[name];
  if (direct && name !== ANONYMOUS) return { offset: direct.offset, type: direct.type };
  const anon = members[ANONYMOUS];
  if (!anon) return undefined;
  const inner = findMember(anon.type, name);
  return inner && { offset: anon.offset + inner.offset, type: inner.type };
}

const SIGNED = new Set(['Int8', 'Int16', 'Int32', 'Int64']);

/**
 * Offset, size and signedness (signed integer scalar or not) of a C member path
 * ('mmio.phys_addr'), or undefined if the koffi type lacks it.
 */
export function koffiField(type: TypeObject, cPath: string): { offset: number; size: number; signed: boolean } | undefined {
  let current = type;
  let offset = 0;
  for (const name of cPath.split('.')) {
    const m = findMember(current, name);
    if (!m) return undefined;
    offset += m.offset;
    current = m.type;
  }
  return { offset, size: koffi.sizeof(current), signed: SIGNED.has(koffi.type(current).primitive) };
}

/** Every member path of a koffi type in C spelling, parents before children. */
export function koffiPaths(type: TypeObject, prefix = ''): string[] {
  const out: string[] = [];
  for (const [name, m] of Object.entries(membersOf(type) ?? {})) {
    if (name === ANONYMOUS) { out.push(...koffiPaths(m.type, prefix)); continue; }
    out.push(prefix + name, ...koffiPaths(m.type, `${prefix}${name}.`));
  }
  return out;
}
