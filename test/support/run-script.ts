// Runs an ES-module script in a fresh node process (with tsx, so it may import the repo's .ts
// files by absolute URL: see repoUrl) and reports how it ended: for tests about what keeps a
// process alive, or what would kill it.
import { spawn } from 'node:child_process';

export interface ScriptResult {
  /** Exit code, or null if killed (by the timeout or a signal). */
  code: number | null;
  signal: NodeJS.Signals | null;
  /** True when the script was still running after timeoutMs and had to be killed. */
  timedOut: boolean;
  output: string;
  ms: number;
}

/** file:// URL of a repo file, for `import()` inside a script. */
export function repoUrl(path: string): string {
  return new URL(`../../${path}`, import.meta.url).href;
}

export function runScript(source: string, timeoutMs = 5000): Promise<ScriptResult> {
  return new Promise((resolve) => {
    const started = Date.now();
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', source], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (d) => { output += d; });
    child.stderr.on('data', (d) => { output += d; });
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, timedOut, output, ms: Date.now() - started });
    });
  });
}
