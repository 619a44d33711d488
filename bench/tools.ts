// Host tools the benchmarks drive: finding a command, compiling the C programs under bench/c
// (cached by content hash under bench/results/.build), and running a child process to its
// end with a deadline, its output captured.

import { execFileSync, spawn, type SpawnOptions } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const BENCH_DIR = fileURLToPath(new URL('.', import.meta.url));
export const RESULTS_DIR = join(BENCH_DIR, 'results');
export const REPO_ROOT = fileURLToPath(new URL('..', import.meta.url));

/** Is `name` on PATH (and runnable)? */
export function hasCommand(name: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/**
 * Compiles bench/c/NAME.c with gcc -O2 (plus `flags`), once per source content; returns the
 * binary's path. Throws with gcc's message when it fails.
 */
export function compileC(name: string, flags: readonly string[] = []): string {
  const source = join(BENCH_DIR, 'c', `${name}.c`);
  const hash = createHash('sha256').update(readFileSync(source)).update(flags.join(' ')).digest('hex').slice(0, 12);
  const dir = join(RESULTS_DIR, '.build');
  const binary = join(dir, `${name}-${hash}`);
  if (existsSync(binary)) return binary;
  mkdirSync(dir, { recursive: true });
  const tmp = `${binary}.${process.pid}.tmp`;
  try {
    execFileSync('gcc', ['-O2', '-Wall', '-o', tmp, source, ...flags], { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (err) {
    const stderr = (err as { stderr?: Buffer }).stderr?.toString().trim();
    throw new Error(`gcc ${name}.c failed${stderr ? `: ${stderr.split('\n')[0]}` : ''}`);
  }
  renameSync(tmp, binary);
  return binary;
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** Wall-clock milliseconds from spawn to exit. */
  ms: number;
  timedOut: boolean;
}

/** Runs a command to its end (killed with SIGKILL after `timeoutMs`), capturing stdout and stderr. */
export function run(command: string, args: readonly string[], options: SpawnOptions & { timeoutMs?: number } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const { timeoutMs = 120_000, ...spawnOptions } = options;
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], ...spawnOptions });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout?.on('data', (d: Buffer) => { stdout += d; });
    child.stderr?.on('data', (d: Buffer) => { stderr += d; });
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, ms: performance.now() - started, timedOut });
    });
  });
}

/** Last `n` lines of a process's output, for error messages. */
export function tail(text: string, n = 5): string {
  return text.trim().split('\n').slice(-n).join(' | ');
}
