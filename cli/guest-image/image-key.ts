// Where built guest images live and what names them: the cache root
// ($XDG_CACHE_HOME/rxvirt or ~/.cache/rxvirt) and a content hash of everything
// that decides the image's bytes, so a change to any input builds a new image
// next to the old one and an unchanged input never rebuilds.

import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { isAbsolute, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Bump when the builder changes what it produces from the same inputs. */
export const BUILDER_VERSION = 1;

/** The repo directory holding the image's sources: kernel.config, init.sh, scripts/*.sh. */
export const SOURCE_DIR = fileURLToPath(new URL('.', import.meta.url));

export interface SourceFile {
  /** Path relative to SOURCE_DIR, '/'-separated. */
  name: string;
  data: Uint8Array;
}

export interface GuestImageInputs {
  builderVersion: number;
  kernelSourceVersion: string;
  busyboxVersion: string;
  files: readonly SourceFile[];
}

/** 16 hex digits (64 bits) of SHA-256 over the inputs; file order does not matter, every byte does. */
export function guestImageKey(inputs: GuestImageInputs): string {
  const hash = createHash('sha256');
  // Length-prefixed fields: no two different inputs serialise to the same bytes.
  const field = (bytes: Uint8Array | string): void => {
    const data = typeof bytes === 'string' ? Buffer.from(bytes, 'utf8') : bytes;
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(data.length));
    hash.update(len).update(data);
  };
  field('rxvirt-guest-image');
  field(String(inputs.builderVersion));
  field(inputs.kernelSourceVersion);
  field(inputs.busyboxVersion);
  const files = [...inputs.files].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  field(String(files.length));
  for (const file of files) {
    field(file.name);
    field(file.data);
  }
  return hash.digest('hex').slice(0, 16);
}

/** $XDG_CACHE_HOME/rxvirt when that is an absolute path (the XDG spec ignores relative ones), else ~/.cache/rxvirt. */
export function guestCacheRoot(env: NodeJS.ProcessEnv = process.env, home: string = homedir()): string {
  const xdg = env.XDG_CACHE_HOME;
  return join(xdg && isAbsolute(xdg) ? xdg : join(home, '.cache'), 'rxvirt');
}

export function guestImageDir(cacheRoot: string, key: string): string {
  return join(cacheRoot, `guest-${key}`);
}

/** The image's source files from `dir`: kernel.config, init.sh and every scripts/*.sh. */
export async function readSourceFiles(dir: string = SOURCE_DIR): Promise<SourceFile[]> {
  const scripts = (await readdir(join(dir, 'scripts'))).filter((n) => n.endsWith('.sh')).sort();
  const names = ['kernel.config', 'init.sh', ...scripts.map((n) => `scripts/${n}`)];
  return Promise.all(names.map(async (name) => ({ name, data: await readFile(join(dir, name)) })));
}
