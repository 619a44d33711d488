// Bad user input to `rxvirt`: every
// command's flags and file arguments with wrong values. Each must end with exactly one line on
// stderr that names the input and says what was expected, nothing on stdout, exit code 2, and
// nothing created: the working directory (with its fixture files) and the guest-image cache
// are left exactly as they were. Every case runs cli/main.ts in this process (a fresh module
// instance each, fast); one case per command also runs bin/rxvirt.js as a real process.
// Commands not offered by `rxvirt help` yet are SKIPped.

import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'uvu';
import * as assert from 'uvu/assert';

const root = fileURLToPath(new URL('../..', import.meta.url));
const bin = join(root, 'bin/rxvirt.js');
const base = mkdtempSync(join(tmpdir(), 'rxvirt-cli-input-'));
const cache = join(base, 'cache'); // XDG_CACHE_HOME for every run: must not appear

/** Fixture files every case sees in its working directory. */
function fixtures(dir: string): void {
  mkdirSync(dir);
  writeFileSync(join(dir, 'plain.txt'), 'not an image, not a kernel\n');
  writeFileSync(join(dir, 'odd.img'), new Uint8Array(1000));
  writeFileSync(join(dir, 'good.img'), new Uint8Array(64 * 1024));
  mkdirSync(join(dir, 'adir'));
}

/** Every path under `dir` with its size and mtime: any creation or change shows. */
function listing(dir: string): string[] {
  const out: string[] = [];
  (function walk(d: string) {
    for (const name of readdirSync(d).sort()) {
      const p = join(d, name);
      const st = statSync(p);
      out.push(`${p.slice(dir.length)} ${st.isDirectory() ? 'dir' : st.size} ${st.mtimeMs}`);
      if (st.isDirectory()) walk(p);
    }
  })(dir);
  return out;
}

const help = spawnSync(process.execPath, [bin, 'help'], { cwd: root, encoding: 'utf8' }).stdout;
const offered = (command: string) => new RegExp(`^  ${command}\\b`, 'm').test(help);

const longSocket = 'a'.repeat(120) + '.sock';
const vu = (device: string, ...rest: string[]) => ['vhost-user', device, '--socket', 's.sock', ...rest];
const dtb = (...rest: string[]) => ['dtb', '--hypervisor', 'gunyah', ...rest];
const run = (...rest: string[]) => ['run', '--kernel', 'good.img', ...rest];

/** [command, argv, what the one line must say]. */
const CASES: [string, string[], RegExp][] = [
  ['(none)', ['bogus'], /unknown command 'bogus' \(expected one of: /],
  ['(none)', ['--version'], /unknown command '--version'/],
  ['info', ['info', 'extra'], /info: unexpected argument 'extra'/],
  ['start', ['start', 'extra'], /start: .*'extra'/],
  ['start', ['start', '--bogus'], /start: .*'--bogus'/],

  ['guest', ['guest'], /guest: unknown subcommand '' \(expected: guest build/],
  ['guest', ['guest', 'make'], /guest: unknown subcommand 'make'/],
  ['guest', ['guest', 'build', '--bogus'], /guest build: unknown option '--bogus' \(expected one of: --force, --print\)/],
  ['guest', ['guest', 'build', '--force=yes'], /guest build: --force takes no value/],
  ['guest', ['guest', 'build', 'extra'], /guest build: unexpected argument 'extra'/],

  ['vhost-user', ['vhost-user'], /vhost-user: expected a device \(one of: blk, rng, console\)/],
  ['vhost-user', ['vhost-user', 'disk'], /vhost-user: unknown device 'disk'/],
  ['vhost-user', ['vhost-user', 'rng'], /vhost-user rng: --socket is required/],
  ['vhost-user', ['vhost-user', 'rng', '--socket'], /--socket needs a value/],
  ['vhost-user', ['vhost-user', 'rng', '--socket', 'missing/x.sock'], /--socket 'missing\/x.sock': directory 'missing' does not exist/],
  ['vhost-user', ['vhost-user', 'rng', '--socket', 'plain.txt'], /--socket 'plain.txt' exists and is not a socket/],
  ['vhost-user', ['vhost-user', 'rng', '--socket', longSocket], /--socket '.*' is longer than a unix socket path may be/],
  ['vhost-user', [...vu('rng'), '--socket', 't.sock'], /--socket given twice/],
  ['vhost-user', vu('rng', '--image', 'good.img'), /unknown option '--image'/],
  ['vhost-user', vu('blk'), /--image is required/],
  ['vhost-user', vu('blk', '--image', 'missing.img'), /--image 'missing.img' does not exist/],
  ['vhost-user', vu('blk', '--image', 'adir'), /--image 'adir' is not a regular file/],
  ['vhost-user', vu('blk', '--image', '/dev/null'), /--image '\/dev\/null' is not a regular file/],
  ['vhost-user', vu('blk', '--image', 'odd.img'), /--image 'odd.img'.*not a multiple of 512/],
  ['vhost-user', vu('blk', '--image', 'good.img', '--serial', 'x'.repeat(21)), /--serial '.*' is not printable ASCII of at most 20/],
  ['vhost-user', vu('blk', '--image', 'good.img', '--serial', 'caf\u00e9'), /--serial 'caf\u00e9' is not printable ASCII/],
  ['vhost-user', vu('blk', '--image', 'good.img', '--readonly=yes'), /--readonly takes no value/],
  ['vhost-user', vu('blk', '--image', 'good.img', 'extra'), /unexpected argument 'extra'/],
  ['vhost-user', vu('console', '--to', 'tcp:1234'), /--to 'tcp:1234' is not one of stdio, unix:PATH, file:PATH/],
  ['vhost-user', vu('console', '--to', 'unix:'), /--to 'unix:' is not one of/],
  ['vhost-user', vu('console', '--to', 'unix:nobody.sock'), /--to 'unix:nobody.sock': cannot connect/],
  ['vhost-user', vu('console', '--to', 'file:missing/out.txt'), /--to 'file:missing\/out.txt': directory 'missing' does not exist/],

  ['dtb', ['dtb', '-o', 'x.dtb'], /dtb: --hypervisor is required/],
  ['dtb', ['dtb', '--hypervisor', 'kvm', '-o', 'x.dtb'], /--hypervisor 'kvm' has no device tree \(expected gunyah/],
  ['dtb', dtb(), /dtb: -o FILE is required/],
  ['dtb', dtb('-o'), /--output needs a value/],
  ['dtb', dtb('--memory', 'lots', '-o', 'x.dtb'), /--memory 'lots' is not a size/],
  ['dtb', dtb('--memory', '0', '-o', 'x.dtb'), /--memory '0' is out of range/],
  ['dtb', dtb('--memory', '3M', '-o', 'x.dtb'), /--memory '3M' must be a multiple of 2M and at least 4M/],
  ['dtb', dtb('--memory', '99999999999G', '-o', 'x.dtb'), /--memory '99999999999G'/],
  ['dtb', dtb('--disk', 'missing.img', '-o', 'x.dtb'), /--disk 'missing.img' does not exist/],
  ['dtb', dtb('--disk', 'adir', '-o', 'x.dtb'), /--disk 'adir' is not a file or block device/],
  ['dtb', dtb('--disk', 'good.img,ro', '-o', 'x.dtb'), /--disk option 'ro' is unknown \(expected readonly or serial=ID\)/],
  ['dtb', dtb('--disk', ',readonly', '-o', 'x.dtb'), /--disk ',readonly' has no path/],
  ['dtb', dtb('--disk', 'good.img,serial=', '-o', 'x.dtb'), /--disk serial '' must be 1 to 20 printable ASCII/],
  ['dtb', dtb('--console', 'tcp:1', '-o', 'x.dtb'), /--console 'tcp:1' is not stdio, unix:PATH or file:PATH/],
  ['dtb', dtb('--rng=yes', '-o', 'x.dtb'), /--rng takes no value/],
  ['dtb', dtb('-o', 'x.dtb', 'extra'), /dtb: unexpected argument 'extra'/],
  ['dtb', dtb('-o', 'missing/x.dtb'), /-o 'missing\/x.dtb'/],
  ['dtb', dtb('-o', 'adir'), /-o 'adir'/],

  ['run', ['run'], /run: --kernel is required/],
  ['run', ['run', '--kernel', 'missing'], /--kernel 'missing' does not exist/],
  ['run', ['run', '--kernel', 'adir'], /--kernel 'adir' is not a regular file/],
  ['run', ['run', '--kernel', 'plain.txt', '--hypervisor', 'kvm'], /--kernel .*plain.txt.*neither an ELF kernel/],
  ['run', run('--initrd', 'missing.cpio'), /--initrd 'missing.cpio' does not exist/],
  ['run', run('--memory', 'abc'), /--memory 'abc' is not a size/],
  ['run', run('--memory', '12M'), /--memory '12M' must be a multiple of 4K and at least 16M/],
  ['run', run('--cpus', '0'), /--cpus '0' is not a whole number from 1 to/],
  ['run', run('--cpus', 'two'), /--cpus 'two' is not a whole number/],
  ['run', run('--cpus', '1000'), /--cpus '1000' is not a whole number from 1 to/],
  ['run', run('--disk', 'missing.img'), /--disk 'missing.img' does not exist/],
  ['run', run('--disk', 'odd.img'), /--disk 'odd.img' is 1000 bytes, not a multiple of 512/],
  ['run', run('--disk', 'adir'), /--disk 'adir' is not a regular file or block device/],
  ['run', run('--disk', 'good.img,ro'), /--disk 'good.img,ro': unknown option 'ro'/],
  ['run', run('--disk', 'good.img,serial=' + 'x'.repeat(21)), /serial '.*' is not printable ASCII of at most 20/],
  ['run', run('--console', 'tcp:1'), /--console 'tcp:1' is not one of stdio, unix:PATH, file:PATH/],
  ['run', run('--console', 'unix:nobody.sock'), /--console 'unix:nobody.sock': no unix socket at 'nobody.sock'/],
  ['run', run('--serial', 'unix:x.sock'), /--serial 'unix:x.sock' is not one of stdio, file:PATH/],
  ['run', run('--serial', 'file:missing/ttyS0.log'), /--serial 'file:missing\/ttyS0.log': directory 'missing' does not exist/],
  ['run', run('--hypervisor', 'xen'), /--hypervisor 'xen' is not one of auto, kvm, gunyah/],
  ['run', run('--rng=1'), /--rng takes no value/],
  ['run', run('--cmdline', 'a\nb'), /--cmdline must be one line/],
  ['run', run('--bogus'), /run: unknown option '--bogus'/],
];

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * The CLI in this process: cli/main.ts evaluated afresh (a new module instance per case) with
 * `argv`, in `cwd`, its output captured. A throw out of main.ts is what would kill the process
 * (exit 1 with a stack trace). Fast enough for every case; the real entry point is checked in a
 * child process for a sample below.
 */
let instance = 0;
async function rxvirtInProcess(argv: string[], cwd: string): Promise<Result> {
  const saved = { argv: process.argv, cwd: process.cwd(), exitCode: process.exitCode, out: process.stdout.write, err: process.stderr.write,
    cache: process.env.XDG_CACHE_HOME };
  let stdout = '', stderr = '';
  process.argv = [process.argv[0]!, bin, ...argv];
  process.chdir(cwd);
  process.exitCode = undefined;
  process.env.XDG_CACHE_HOME = cache;
  process.stdout.write = ((chunk: string | Uint8Array) => { stdout += String(chunk); return true; }) as typeof process.stdout.write;
  process.stderr.write = ((chunk: string | Uint8Array) => { stderr += String(chunk); return true; }) as typeof process.stderr.write;
  let code: number | null;
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      import(`${mainUrl}?case=${++instance}`),
      new Promise((_, reject) => { timer = setTimeout(() => reject(new Error('still running after 10 s (the input was accepted?)')), 10_000); }),
    ]);
    code = typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (err) {
    stderr += `${(err as Error).stack ?? String(err)}\n`; // what an uncaught exception prints
    code = 1;
  } finally {
    clearTimeout(timer);
    process.stdout.write = saved.out;
    process.stderr.write = saved.err;
    process.argv = saved.argv;
    process.chdir(saved.cwd);
    process.exitCode = saved.exitCode;
    if (saved.cache === undefined) delete process.env.XDG_CACHE_HOME;
    else process.env.XDG_CACHE_HOME = saved.cache;
  }
  return { code, stdout, stderr };
}

/** The real entry point, bin/rxvirt.js, in a child process. */
function rxvirtProcess(argv: string[], cwd: string): Promise<Result> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [bin, ...argv], {
      cwd, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, XDG_CACHE_HOME: cache, FORCE_COLOR: '0' },
    });
    let stdout = '', stderr = '';
    child.stdout.on('data', (d) => { stdout += d; });
    child.stderr.on('data', (d) => { stderr += d; });
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

function judge(result: Result, expected: RegExp, before: string[], after: string[]): void {
  const lines = result.stderr.split('\n').filter((l) => l !== '');
  assert.is(result.code, 2, `exit code (stderr: ${result.stderr.trim().split('\n').slice(0, 3).join(' | ')})`);
  assert.is(lines.length, 1, `one line on stderr, got: ${JSON.stringify(result.stderr)}`);
  assert.match(lines[0]!, /^rxvirt: /);
  assert.match(lines[0]!, expected);
  assert.is(result.stdout, '', 'nothing on stdout');
  assert.equal(after, before, 'nothing created or changed in the working directory');
  assert.not.ok(statSync(cache, { throwIfNoEntry: false }), 'no guest-image cache created');
}

const mainUrl = new URL('../../cli/main.ts', import.meta.url).href;
const skipped = new Set<string>();
/** One case per command (and both dtb output cases) also go through a real process. */
const sampled = new Set<number>();

CASES.forEach(([command, argv, expected], i) => {
  const name = `rxvirt ${argv.map((a) => (a.length > 40 ? `${a.slice(0, 12)}…` : a)).join(' ').replace(/\n/g, '\\n')}`;
  if (command !== '(none)' && !offered(command)) {
    skipped.add(command);
    test.skip(name, () => {});
    return;
  }
  if (!CASES.slice(0, i).some(([c]) => c === command) || expected.source.startsWith("-o '")) sampled.add(i);
  test(name, async () => {
    const cwd = join(base, `case${i}`);
    fixtures(cwd);
    const before = listing(cwd);
    judge(await rxvirtInProcess(argv, cwd), expected, before, listing(cwd));
  });
});

test('the real entry point (bin/rxvirt.js in a child process) gives the same one line and exit code 2', async () => {
  const picks = [...sampled];
  const outcomes = await Promise.all(picks.map(async (i) => {
    const cwd = join(base, `process${i}`);
    fixtures(cwd);
    const before = listing(cwd);
    return { i, result: await rxvirtProcess(CASES[i]![1], cwd), before, after: listing(cwd) };
  }));
  const failures: string[] = [];
  for (const { i, result, before, after } of outcomes) {
    try {
      judge(result, CASES[i]![2], before, after);
    } catch (err) {
      failures.push(`rxvirt ${CASES[i]![1].join(' ')}: ${(err as Error).message}`);
    }
  }
  assert.equal(failures, [], `${failures.length} of ${picks.length} processes`);
});

if (skipped.size) console.log(`SKIP cli-input: commands not offered by \`rxvirt help\` yet: ${[...skipped].join(', ')}`);

test.after(() => rmSync(base, { recursive: true, force: true }));

test.run();
