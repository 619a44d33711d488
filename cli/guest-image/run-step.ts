// Runs one external build command (tar, make, ...): its own process group so an
// abort kills it and everything it started, all output appended to the build
// log, each output line handed to a callback, and on failure an error quoting
// the last lines of output.

import { spawn } from 'node:child_process';
import type { WriteStream } from 'node:fs';
import { GuestBuildError } from './errors.ts';

export interface StepOptions {
  cwd: string;
  env?: NodeJS.ProcessEnv;
  log: WriteStream;
  signal: AbortSignal;
  onLine?: (line: string) => void;
}

const TAIL_LINES = 12;

export function runStep(command: string, args: readonly string[], opts: StepOptions): Promise<void> {
  return new Promise((resolve, reject) => {
    if (opts.signal.aborted) {
      reject(new GuestBuildError('EINTR', 'guest build interrupted'));
      return;
    }
    opts.log.write(`\n$ ${command} ${args.join(' ')}\n`);
    const child = spawn(command, args, {
      cwd: opts.cwd,
      env: { ...(opts.env ?? process.env), LC_ALL: 'C' },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true, // own process group: killed as a whole, and a terminal's ^C reaches only us
    });
    const tail: string[] = [];
    let partial = '';
    const onData = (chunk: Buffer): void => {
      opts.log.write(chunk);
      const text = partial + chunk.toString('utf8');
      const lines = text.split('\n');
      partial = lines.pop()!;
      for (const line of lines) {
        tail.push(line);
        if (tail.length > TAIL_LINES) tail.shift();
        opts.onLine?.(line);
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    const kill = (): void => {
      try {
        if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
      } catch { /* already gone */ }
    };
    opts.signal.addEventListener('abort', kill, { once: true });
    child.on('error', (err: NodeJS.ErrnoException) => {
      opts.signal.removeEventListener('abort', kill);
      reject(err.code === 'ENOENT'
        ? new GuestBuildError('ENOENT', `guest build needs the command '${command}', which is not on PATH`)
        : new GuestBuildError('EIO', `guest build could not run ${command}: ${err.message}`));
    });
    child.on('close', (code, sig) => {
      opts.signal.removeEventListener('abort', kill);
      if (partial) {
        tail.push(partial);
        if (tail.length > TAIL_LINES) tail.shift();
        opts.onLine?.(partial);
      }
      if (opts.signal.aborted) reject(new GuestBuildError('EINTR', 'guest build interrupted'));
      else if (code === 0) resolve();
      else {
        const status = sig ? `killed by ${sig}` : `exit status ${code}`;
        reject(new GuestBuildError('EIO', `guest build step '${command} ${args.join(' ')}' failed (${status}); last output:\n${tail.join('\n')}`));
      }
    });
  });
}
