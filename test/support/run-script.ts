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

export interface ScriptOptions {
  /** How long the script may run before it is killed and reported as timedOut. */
  timeoutMs?: number;
  /**
   * Start the timeout only once the output contains this text (printed by the script when its
   * setup is done), so a slow start on a busy machine does not count; the start itself may take
   * up to a minute.
   */
  armOn?: string;
}

export function runScript(source: string, options: ScriptOptions = {}): Promise<ScriptResult> {
  const { timeoutMs = 5000, armOn } = options;
  return new Promise((resolve) => {
    const started = Date.now();
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', source], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    let timedOut = false;
    let timer: NodeJS.Timeout | undefined;
    const arm = (ms: number) => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        timedOut = true;
        child.kill('SIGKILL');
      }, ms);
    };
    let armed = armOn === undefined;
    arm(armed ? timeoutMs : 60_000);
    const onData = (d: Buffer) => {
      output += d;
      if (!armed && output.includes(armOn!)) {
        armed = true;
        arm(timeoutMs);
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, timedOut, output, ms: Date.now() - started });
    });
  });
}
