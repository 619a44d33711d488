// Strict command-line flag parsing shared by every subcommand. Any bad input
// becomes a UsageError whose message is one line naming the input and what was
// expected; main.ts prints it and exits 2.

export class UsageError extends Error {}

export type FlagKind = 'string' | 'boolean' | 'list';

export interface FlagSpec {
  readonly [name: string]: FlagKind;
}

export type ParsedFlags<S extends FlagSpec> = {
  [K in keyof S]?: S[K] extends 'boolean' ? boolean : S[K] extends 'list' ? string[] : string;
};

/** Parses `--name value`, `--name=value` and boolean `--name`; positional arguments are refused unless allowed. */
export function parseFlags<S extends FlagSpec>(
  command: string,
  argv: readonly string[],
  spec: S,
  options: { positional?: number } = {},
): { flags: ParsedFlags<S>; positional: string[] } {
  const flags: Record<string, unknown> = {};
  const positional: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (!arg.startsWith('--')) {
      if (positional.length >= (options.positional ?? 0)) {
        throw new UsageError(`${command}: unexpected argument '${arg}'`);
      }
      positional.push(arg);
      continue;
    }
    const eq = arg.indexOf('=');
    const name = eq >= 0 ? arg.slice(2, eq) : arg.slice(2);
    const kind = spec[name];
    if (!kind) {
      const known = Object.keys(spec).map((k) => `--${k}`).join(', ');
      throw new UsageError(`${command}: unknown option '--${name}' (${known ? `expected one of: ${known}` : `${command} takes no options`})`);
    }
    if (kind === 'boolean') {
      if (eq >= 0) throw new UsageError(`${command}: --${name} takes no value`);
      if (name in flags) throw new UsageError(`${command}: --${name} given twice`);
      flags[name] = true;
      continue;
    }
    let value: string | undefined;
    if (eq >= 0) value = arg.slice(eq + 1);
    else value = argv[++i];
    if (value === undefined || (eq < 0 && value.startsWith('--'))) {
      throw new UsageError(`${command}: --${name} needs a value`);
    }
    if (kind === 'list') ((flags[name] as string[] | undefined) ?? (flags[name] = [] as string[]) as string[]).push(value);
    else if (name in flags) throw new UsageError(`${command}: --${name} given twice`);
    else flags[name] = value;
  }
  return { flags: flags as ParsedFlags<S>, positional };
}

export function required(command: string, name: string, value: string | undefined, what: string): string {
  if (value === undefined || value === '') throw new UsageError(`${command}: --${name} is required (${what})`);
  return value;
}

const SIZE_UNITS: Record<string, number> = { '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3 };

/** "256M", "1G", "4096" -> bytes; one-line error otherwise. */
export function parseSize(command: string, name: string, text: string): number {
  const m = /^(\d+)([KMG]?)(i?B)?$/i.exec(text);
  if (!m) throw new UsageError(`${command}: --${name} '${text}' is not a size (expected e.g. 256M, 1G or a byte count)`);
  const bytes = Number(m[1]) * SIZE_UNITS[m[2]!.toUpperCase()]!;
  if (!Number.isSafeInteger(bytes) || bytes <= 0) {
    throw new UsageError(`${command}: --${name} '${text}' is out of range (expected a positive size)`);
  }
  return bytes;
}

export function parseIntInRange(command: string, name: string, text: string, min: number, max: number): number {
  if (!/^\d+$/.test(text) || Number(text) < min || Number(text) > max) {
    throw new UsageError(`${command}: --${name} '${text}' is not a whole number from ${min} to ${max}`);
  }
  return Number(text);
}
