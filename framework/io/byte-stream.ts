// The host end of a character device (the virtio console): bytes from the host as an
// observable, bytes to the host through `output`, with flow control both ways, and
// factories binding it to this process's stdio, a unix stream socket, or an append-only
// file. Node streams stay inside this module; devices only see ByteStream.

import { once } from 'node:events';
import { closeSync, createWriteStream, openSync } from 'node:fs';
import { createConnection, type Socket } from 'node:net';
import type { Readable, Writable } from 'node:stream';
import { EMPTY, Observable } from 'rxjs';

export interface TerminalSize {
  cols: number;
  rows: number;
}

export interface ByteStream {
  /** Host -> device bytes, in order; the receiver owns every chunk. Completes when the host side closes. */
  readonly input$: Observable<Uint8Array>;
  /**
   * Device -> host bytes; the stream owns `bytes` from now on. A returned promise means
   * "the host is saturated": send nothing more until it settles.
   */
  output(bytes: Uint8Array): void | Promise<void>;
  /** Host-side backpressure: stop (true) or restart (false) producing input$. Optional. */
  pauseInput?(paused: boolean): void;
  /** Terminal size, current value first, then every change. Optional. */
  readonly size$?: Observable<TerminalSize>;
  /** Release the host resources (socket, file, terminal mode). Idempotent. */
  close(): void;
}

/** Chunks of a Node readable stream; subscribing starts the flow, unsubscribing pauses it. */
export function readableInput(stream: Readable): Observable<Uint8Array> {
  return new Observable<Uint8Array>((subscriber) => {
    const onData = (chunk: Buffer | string) => subscriber.next(typeof chunk === 'string' ? Buffer.from(chunk) : chunk);
    const onEnd = () => subscriber.complete();
    stream.on('data', onData);
    stream.once('end', onEnd);
    stream.once('close', onEnd);
    stream.resume(); // a 'data' listener alone does not restart a stream an earlier subscriber paused
    return () => {
      stream.off('data', onData);
      stream.off('end', onEnd);
      stream.off('close', onEnd);
      stream.pause();
    };
  });
}

/**
 * `output` for a Node writable stream: a promise while the stream is above its high-water
 * mark (settled by 'drain', or by 'close' / 'error' so a dead peer cannot stall the device).
 * One promise per saturation period, shared by every caller, its listeners removed when it
 * settles. Bytes written after the stream died are dropped, like a serial line with nobody
 * listening.
 */
export function writableOutput(stream: Writable): (bytes: Uint8Array) => void | Promise<void> {
  stream.on('error', () => {}); // EPIPE and friends: the host side went away; 'close' follows
  let saturated: Promise<void> | null = null;
  const waitForRoom = () => new Promise<void>((resolve) => {
    const done = () => {
      stream.off('drain', done);
      stream.off('close', done);
      stream.off('error', done);
      saturated = null;
      resolve();
    };
    stream.on('drain', done);
    stream.on('close', done);
    stream.on('error', done);
  });
  return (bytes) => {
    if (stream.destroyed || stream.writableEnded) return;
    if (stream.write(bytes)) return;
    return (saturated ??= waitForRoom());
  };
}

/** This process's stdin/stdout; a TTY is switched to raw mode (restored by close) and reports its size. */
export function stdioStream(options: { raw?: boolean } = {}): ByteStream {
  const stdin = process.stdin;
  const stdout = process.stdout;
  const raw = (options.raw ?? true) && stdin.isTTY === true;
  if (raw) stdin.setRawMode(true);
  let closed = false;
  const size$ = stdout.isTTY
    ? new Observable<TerminalSize>((subscriber) => {
        const emit = () => subscriber.next({ cols: stdout.columns, rows: stdout.rows });
        emit();
        stdout.on('resize', emit);
        return () => stdout.off('resize', emit);
      })
    : undefined;
  return {
    input$: readableInput(stdin),
    output: writableOutput(stdout),
    pauseInput: (paused) => (paused ? stdin.pause() : stdin.resume()),
    ...(size$ ? { size$ } : {}),
    close() {
      if (closed) return;
      closed = true;
      if (raw) stdin.setRawMode(false);
      stdin.pause();
    },
  };
}

/** A ByteStream over a connected Node socket (or any duplex stream). */
export function socketStream(socket: Socket): ByteStream {
  return {
    input$: readableInput(socket),
    output: writableOutput(socket),
    pauseInput: (paused) => (paused ? socket.pause() : socket.resume()),
    close: () => socket.destroy(),
  };
}

/** Connect to a listening unix stream socket at `path`; rejects with the connect error (code ENOENT, ECONNREFUSED...). */
export async function connectUnixSocket(path: string): Promise<ByteStream> {
  const socket = createConnection({ path });
  try {
    await once(socket, 'connect');
  } catch (err) {
    socket.destroy();
    throw err;
  }
  return socketStream(socket);
}

/** Output appended to the file at `path` (created if missing, errors thrown now); no input. */
export function appendFileStream(path: string): ByteStream {
  const fd = openSync(path, 'a');
  let stream: Writable;
  try {
    stream = createWriteStream(path, { fd, autoClose: true });
  } catch (err) {
    closeSync(fd);
    throw err;
  }
  return {
    input$: EMPTY,
    output: writableOutput(stream),
    close: () => {
      if (!stream.writableEnded) stream.end();
    },
  };
}
