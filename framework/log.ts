// One-line diagnostics for guest and frontend misbehaviour. Quiet by default
// (a hostile guest must not be able to flood the host's stderr); RXVIRT_LOG=warn
// or =debug turns lines on, and tests can capture them through `setLogSink`.

export type LogLevel = 'warn' | 'debug';
export type LogSink = (level: LogLevel, scope: string, message: string) => void;

const envLevel = process.env.RXVIRT_LOG;
let sink: LogSink | null = envLevel === 'warn' || envLevel === 'debug'
  ? (level, scope, message) => {
      if (level === 'debug' && envLevel !== 'debug') return;
      process.stderr.write(`rxvirt ${level} ${scope}: ${message}\n`);
    }
  : null;

export function setLogSink(next: LogSink | null): void {
  sink = next;
}

/** A message may be a thunk, so guest-triggered paths build no string while logging is off. */
export type LogMessage = string | (() => string);

export function warn(scope: string, message: LogMessage): void {
  if (sink) sink('warn', scope, typeof message === 'string' ? message : message());
}

export function debug(scope: string, message: LogMessage): void {
  if (sink) sink('debug', scope, typeof message === 'string' ? message : message());
}
