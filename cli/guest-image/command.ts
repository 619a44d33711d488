// `rxvirt guest build [--force] [--print]`: builds (or finds) the guest image.
// Progress goes to stderr; stdout gets one summary line, or with --print the
// image's paths as shell assignments (eval "$(rxvirt guest build --print)").

import { constants } from 'node:os';
import { GuestBuildError } from './errors.ts';
import { ensureGuestImage, findGuestImage, type GuestImage } from './guest-image.ts';

export interface GuestBuildFlags {
  force: boolean;
  print: boolean;
}

function shellQuote(s: string): string {
  return /^[A-Za-z0-9_./+:-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

export function printAssignments(image: GuestImage): string {
  return (Object.keys(image) as (keyof GuestImage)[]).map((k) => `${k}=${shellQuote(image[k])}\n`).join('');
}

/** Runs the command; returns the process exit status. */
export async function guestBuild(flags: GuestBuildFlags): Promise<number> {
  try {
    const wasCached = !flags.force && (await findGuestImage()) !== undefined;
    const started = Date.now();
    const image = await ensureGuestImage({ force: flags.force });
    if (flags.print) process.stdout.write(printAssignments(image));
    else console.log(`guest image: ${image.dir} (${wasCached ? 'cached' : `built in ${Math.round((Date.now() - started) / 1000)} s`})`);
    return 0;
  } catch (err) {
    if (!(err instanceof GuestBuildError)) throw err;
    console.error(`rxvirt: ${err.message}`);
    return err.signal ? 128 + (constants.signals[err.signal] ?? 0) : 1;
  }
}
