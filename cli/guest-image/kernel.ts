// Builds the guest kernel from Debian's linux-source tarball: extract, `make
// tinyconfig`, merge the repo's fragment on an allnoconfig base (so nothing
// else creeps in), check every fragment line survived Kconfig's dependency
// resolution, then `make -j<cpus> bzImage` (which also links vmlinux).

import { availableParallelism } from 'node:os';
import type { WriteStream } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { GuestBuildError } from './errors.ts';
import { KERNEL_SOURCE_TARBALL } from './host.ts';
import type { BuildProgress } from './progress.ts';
import { runStep } from './run-step.ts';

export interface KernelBuildContext {
  log: WriteStream;
  signal: AbortSignal;
  progress: BuildProgress;
}

export interface BuiltKernel {
  tree: string;
  bzImage: string;
  vmlinux: string;
  config: string;
  systemMap: string;
  release: string;
}

/**
 * Lines of a config fragment that the final .config does not honour, as
 * "CONFIG_X: wanted y, got n". A fragment line is either `CONFIG_X=value` or
 * `# CONFIG_X is not set`; a symbol absent from the final config counts as not set.
 */
export function configMismatches(fragment: string, finalConfig: string): string[] {
  const parse = (text: string): Map<string, string> => {
    const values = new Map<string, string>();
    for (const raw of text.split('\n')) {
      const line = raw.trim();
      const set = /^(CONFIG_[A-Za-z0-9_]+)=(.*)$/.exec(line);
      const unset = /^# (CONFIG_[A-Za-z0-9_]+) is not set$/.exec(line);
      if (set) values.set(set[1]!, set[2]!);
      else if (unset) values.set(unset[1]!, 'n');
    }
    return values;
  };
  const actual = parse(finalConfig);
  const mismatches: string[] = [];
  for (const [name, wanted] of parse(fragment)) {
    const got = actual.get(name) ?? 'n';
    if (got !== wanted) mismatches.push(`${name}: wanted ${wanted}, got ${got}`);
  }
  return mismatches;
}

/** A kbuild progress line ("  CC      kernel/fork.o") as "CC kernel/fork.o", else undefined. */
export function kbuildStep(line: string): string | undefined {
  const m = /^ {2}([A-Z][A-Z0-9_-]*) +(\S.*)$/.exec(line);
  return m ? `${m[1]} ${m[2]}` : undefined;
}

/** Only what kbuild needs: an inherited MAKEFLAGS, CC, O= or KCONFIG_* would silently change the build. */
function kbuildEnv(): NodeJS.ProcessEnv {
  return {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    HOME: process.env.HOME ?? '/',
    ...(process.env.TMPDIR ? { TMPDIR: process.env.TMPDIR } : {}),
    ARCH: 'x86_64',
    KBUILD_BUILD_USER: 'rxvirt',
    KBUILD_BUILD_HOST: 'rxvirt',
  };
}

export async function buildKernel(work: string, fragmentPath: string, ctx: KernelBuildContext): Promise<BuiltKernel> {
  const env = kbuildEnv();
  const tree = join(work, 'linux-source-6.1');
  const step = { env, log: ctx.log, signal: ctx.signal };

  ctx.progress.stage('extracting kernel source');
  await runStep('tar', ['-xJf', KERNEL_SOURCE_TARBALL, '-C', work], { ...step, cwd: work });

  ctx.progress.stage('configuring kernel');
  await runStep('make', ['tinyconfig'], { ...step, cwd: tree });
  await runStep(join(tree, 'scripts/kconfig/merge_config.sh'), ['-n', '.config', fragmentPath], { ...step, cwd: tree });
  const [fragment, config] = await Promise.all([readFile(fragmentPath, 'utf8'), readFile(join(tree, '.config'), 'utf8')]);
  const mismatches = configMismatches(fragment, config);
  if (mismatches.length) {
    throw new GuestBuildError('EIO', `guest kernel config: ${mismatches.join('; ')} (a dependency is missing from cli/guest-image/kernel.config)`);
  }

  ctx.progress.stage('building kernel');
  await runStep('make', [`-j${availableParallelism()}`, 'bzImage'], {
    ...step,
    cwd: tree,
    onLine: (line) => {
      const text = kbuildStep(line);
      if (text) ctx.progress.step(text.replace(`${tree}/`, '')); // objtool's steps name absolute paths
    },
  });

  return {
    tree,
    bzImage: join(tree, 'arch/x86/boot/bzImage'),
    vmlinux: join(tree, 'vmlinux'),
    config: join(tree, '.config'),
    systemMap: join(tree, 'System.map'),
    release: (await readFile(join(tree, 'include/config/kernel.release'), 'utf8')).trim(),
  };
}
