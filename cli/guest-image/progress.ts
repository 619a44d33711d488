// Progress of a guest build, in two renderings: one live line rewritten in
// place on a terminal (stage, elapsed time, kernel build steps, last step), or
// plain lines (each stage, then a step count every few seconds) for logs and
// for callers that asked for lines.

export interface BuildProgress {
  /** A new stage begins, e.g. "building kernel". */
  stage(label: string): void;
  /** One kernel build step finished (a kbuild line such as "CC kernel/fork.o"). */
  step(text: string): void;
  /** Removes the live line, if any; call once when the build ends either way. */
  end(): void;
}

export function formatElapsed(ms: number): string {
  const s = Math.floor(ms / 1000);
  return s < 60 ? `${s}s` : `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
}

/** Plain lines through `emit`: every stage, and "N steps" at most once per `everyMs` while steps arrive. */
export function lineProgress(emit: (line: string) => void, everyMs = 15_000, now: () => number = Date.now): BuildProgress {
  const started = now();
  let label = '';
  let steps = 0;
  let lastEmit = started;
  return {
    stage(next) {
      label = next;
      lastEmit = now();
      emit(`guest build: ${label} (${formatElapsed(lastEmit - started)})`);
    },
    step() {
      steps++;
      const t = now();
      if (t - lastEmit >= everyMs) {
        lastEmit = t;
        emit(`guest build: ${label}, ${steps} steps (${formatElapsed(t - started)})`);
      }
    },
    end() {},
  };
}

/** One line on a terminal, redrawn at most every 100 ms and once a second for the clock. */
export function ttyProgress(out: NodeJS.WriteStream): BuildProgress {
  const started = Date.now();
  let label = '';
  let steps = 0;
  let last = '';
  let drawn = 0;
  const draw = (): void => {
    drawn = Date.now();
    const counts = steps > 0 ? `  ${steps} steps  ${last}` : '';
    const line = `guest build: ${label}  ${formatElapsed(drawn - started)}${counts}`;
    out.write(`\r\x1b[K${line.slice(0, Math.max(20, (out.columns || 80) - 1))}`);
  };
  const clock = setInterval(draw, 1000);
  clock.unref();
  return {
    stage(next) { label = next; draw(); },
    step(text) {
      steps++;
      last = text;
      if (Date.now() - drawn >= 100) draw();
    },
    end() {
      clearInterval(clock);
      out.write('\r\x1b[K');
    },
  };
}
