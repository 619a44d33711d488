// The flattened device tree format (Devicetree Specification v0.4, chapter 5) as constants,
// the name rules both the writer and the reader enforce, and FdtError. Everything in a blob is
// big-endian; the struct block is a stream of 4-byte-aligned tokens.

export const FDT_MAGIC = 0xd00dfeed;
/** The version written; readers of version 16 can read it (last_comp_version). */
export const FDT_VERSION = 17;
export const FDT_LAST_COMP_VERSION = 16;
export const FDT_HEADER_SIZE = 40;
export const FDT_RESERVE_ENTRY_SIZE = 16;

export const FDT_BEGIN_NODE = 1;
export const FDT_END_NODE = 2;
export const FDT_PROP = 3;
export const FDT_NOP = 4;
export const FDT_END = 9;

/** Longest node name (without unit address) and property name the specification allows. */
export const FDT_MAX_NAME = 31;

/** Header field byte offsets. */
export const HEADER = Object.freeze({
  magic: 0,
  totalsize: 4,
  offDtStruct: 8,
  offDtStrings: 12,
  offMemRsvmap: 16,
  version: 20,
  lastCompVersion: 24,
  bootCpuidPhys: 28,
  sizeDtStrings: 32,
  sizeDtStruct: 36,
});

/** A malformed tree (reader) or a tree the specification forbids (writer). */
export class FdtError extends Error {
  override readonly name = 'FdtError';
  constructor(readonly code: 'EINVAL' | 'ENOSPC', message: string) {
    super(`${message}: ${code}`);
  }
}

const NODE_NAME = /^[0-9A-Za-z,._+-]+$/;
const UNIT_ADDRESS = /^[0-9A-Za-z,._+-]+$/;
const PROPERTY_NAME = /^[0-9A-Za-z,._+?#-]+$/;

/** Why `name` is not a valid node name (`name[@unit-address]`, root excepted), or null. */
export function nodeNameProblem(name: string): string | null {
  const at = name.indexOf('@');
  const base = at < 0 ? name : name.slice(0, at);
  if (base.length === 0) return 'empty node name';
  if (base.length > FDT_MAX_NAME) return `node name '${base}' is longer than ${FDT_MAX_NAME} characters`;
  if (!NODE_NAME.test(base)) return `node name '${name}' has characters outside [0-9A-Za-z,._+-]`;
  if (at >= 0 && !UNIT_ADDRESS.test(name.slice(at + 1))) return `unit address of '${name}' is empty or has invalid characters`;
  return null;
}

/** Why `name` is not a valid property name, or null. */
export function propertyNameProblem(name: string): string | null {
  if (name.length === 0) return 'empty property name';
  if (name.length > FDT_MAX_NAME) return `property name '${name}' is longer than ${FDT_MAX_NAME} characters`;
  if (!PROPERTY_NAME.test(name)) return `property name '${name}' has characters outside [0-9A-Za-z,._+?#-]`;
  return null;
}

export const align4 = (n: number): number => (n + 3) & ~3;
