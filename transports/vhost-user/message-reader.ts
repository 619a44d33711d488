// Message framing on a non-blocking vhost-user stream socket: reads exactly one
// header, validates it, then exactly its payload, collecting the fds that arrive
// on the way. Reading no further than the current message keeps every fd with the
// message it was sent with (the kernel hands ancillary data out with the first
// byte of the send that carried it). Header faults (version, flags, size) are
// reported before any payload is read.

import { recvWithFds } from '../../native/unix-socket.ts';
import {
  FLAG_KNOWN, FLAG_REPLY, FLAG_VERSION, FLAG_VERSION_MASK, HEADER_SIZE, MAX_FDS, MAX_PAYLOAD, decodeHeader,
  protocolError, requestName,
} from './protocol.ts';

export interface Message {
  request: number;
  flags: number;
  /** View into the reader's buffer: valid until the next `next()` call. */
  payload: Uint8Array;
  /** Received fds, owned by whoever handles the message (close what you do not keep). */
  fds: number[];
}

export type ReadResult = Message | 'again' | 'eof';

export class MessageReader {
  private readonly header = new Uint8Array(HEADER_SIZE);
  private readonly payload = new Uint8Array(MAX_PAYLOAD);
  private headerBytes = 0;
  private payloadBytes = 0;
  private payloadSize = -1;
  private request = 0;
  private flags = 0;
  private fds: number[] = [];

  constructor(private readonly socket: number) {}

  /** True while part of a message has been read. */
  get midMessage(): boolean {
    return this.headerBytes > 0;
  }

  /**
   * The next whole message, 'again' when the socket has no more bytes for now, or 'eof'
   * on a clean close between messages. Throws VhostUserProtocolError for a bad header,
   * too many fds, or a close in the middle of a message; fds already received are
   * closed by `discard()`.
   */
  next(): ReadResult {
    while (this.headerBytes < HEADER_SIZE) {
      const n = this.receive(this.header.subarray(this.headerBytes));
      if (n === null) return 'again';
      if (n === 0) {
        if (this.headerBytes === 0 && this.fds.length === 0) return 'eof';
        protocolError('EPROTO', `truncated message: connection closed after ${this.headerBytes} of ${HEADER_SIZE} header bytes`);
      }
      this.headerBytes += n;
      if (this.headerBytes === HEADER_SIZE) this.checkHeader();
    }
    while (this.payloadBytes < this.payloadSize) {
      const n = this.receive(this.payload.subarray(this.payloadBytes, this.payloadSize));
      if (n === null) return 'again';
      if (n === 0) {
        protocolError('EPROTO', `truncated message: connection closed after ${this.payloadBytes} of ` +
          `${this.payloadSize} payload bytes of ${requestName(this.request)}`);
      }
      this.payloadBytes += n;
    }
    const message: Message = {
      request: this.request,
      flags: this.flags,
      payload: this.payload.subarray(0, this.payloadSize),
      fds: this.fds,
    };
    this.headerBytes = this.payloadBytes = 0;
    this.payloadSize = -1;
    this.fds = [];
    return message;
  }

  /** Fds of a partly read message (closed by the caller on teardown). */
  discard(): number[] {
    const fds = this.fds;
    this.fds = [];
    return fds;
  }

  private checkHeader(): void {
    const { request, flags, size } = decodeHeader(this.header);
    this.request = request;
    this.flags = flags;
    const name = requestName(request);
    if ((flags & FLAG_VERSION_MASK) !== FLAG_VERSION) {
      protocolError('EPROTO', `${name}: unsupported protocol version ${flags & FLAG_VERSION_MASK} (flags 0x${flags.toString(16)})`);
    }
    if (flags & ~FLAG_KNOWN) protocolError('EPROTO', `${name}: unknown flag bits 0x${(flags & ~FLAG_KNOWN).toString(16)}`);
    if (flags & FLAG_REPLY) protocolError('EPROTO', `${name}: request carries the reply flag`);
    if (size > MAX_PAYLOAD) protocolError('EPROTO', `${name}: payload of ${size} bytes (at most ${MAX_PAYLOAD})`);
    this.payloadSize = size;
  }

  private receive(into: Uint8Array): number | null {
    const got = recvWithFds(this.socket, into, MAX_FDS);
    if (got === null) return null;
    if (got.fds.length) this.fds.push(...got.fds);
    if (got.truncated || this.fds.length > MAX_FDS) {
      const what = this.headerBytes === HEADER_SIZE ? requestName(this.request) : 'message';
      protocolError('EPROTO', `${what}: more than ${MAX_FDS} fds in one message`);
    }
    return got.bytes;
  }
}
