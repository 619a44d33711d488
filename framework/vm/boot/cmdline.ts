// The guest kernel command line, composed in a fixed order: the platform's words (console=),
// one `virtio_mmio.device=` entry per attached device, the hypervisor's work-arounds, then
// the user's arguments last so they can override any of them. Checked against the kernel's
// limit (the setup header's cmdline_size) because an over-long line is cut silently by Linux.

import { BootError } from './boot-error.ts';

/** x86 COMMAND_LINE_SIZE minus the NUL, for kernels that do not say (ELF images). */
export const DEFAULT_CMDLINE_LIMIT = 2047;

export interface CmdlineParts {
  readonly platform?: readonly string[];
  readonly devices?: readonly string[];
  readonly quirks?: readonly string[];
  /** Appended as given. */
  readonly user?: string;
}

export function composeCmdline(parts: CmdlineParts, limit = DEFAULT_CMDLINE_LIMIT): string {
  const words = [...(parts.platform ?? []), ...(parts.devices ?? []), ...(parts.quirks ?? [])];
  const user = parts.user?.trim();
  if (user) words.push(user);
  const line = words.join(' ');
  if (line.includes('\0')) throw new BootError('EINVAL', 'kernel command line contains a NUL byte');
  const length = Buffer.byteLength(line);
  if (length > limit) throw new BootError('E2BIG', `kernel command line is ${length} bytes, the kernel takes at most ${limit}`);
  return line;
}
