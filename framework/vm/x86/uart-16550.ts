// A 16550A UART on eight I/O ports (COM1: 0x3f8, IRQ 4), the console every x86 guest kernel
// knows. Transmission is instant, so THR is always empty (LSR.THRE|TEMT) and bytes go straight
// to `output$`. Host input waits in an unbounded host-side buffer; the guest sees at most the
// 16-byte FIFO of it (1 byte with the FIFO off). Interrupts follow the chip: IIR reports the
// highest-priority enabled condition, and `interrupt()` is called on each rising edge of the
// line (no condition -> some condition), never for conditions already pending. Modem lines read
// as connected; MCR loopback routes THR to RBR and MCR outputs to MSR inputs like the chip, so
// the guest's UART probe passes. Register map: THR/RBR, IER, IIR/FCR, LCR, MCR, LSR, MSR, SCR,
// with DLL/DLM behind LCR.DLAB.

import { Subject, type Observable, type Subscription } from 'rxjs';
import type { PortHandler } from './port-bus.ts';

export const COM1_PORT = 0x3f8;
export const COM1_IRQ = 4;
export const UART_PORT_COUNT = 8;

// Register offsets.
const RBR_THR_DLL = 0;
const IER_DLM = 1;
const IIR_FCR = 2;
const LCR = 3;
const MCR = 4;
const LSR = 5;
const MSR = 6;
const SCR = 7;

// IER bits.
const IER_RDI = 0x01;
const IER_THRI = 0x02;
const IER_MSI = 0x08;
// IIR values.
const IIR_NONE = 0x01;
const IIR_MSI = 0x00;
const IIR_THRI = 0x02;
const IIR_RDI = 0x04;
const IIR_FIFO_ENABLED = 0xc0;
// FCR bits.
const FCR_ENABLE = 0x01;
const FCR_CLEAR_RX = 0x02;
// LCR, MCR, LSR, MSR bits.
const LCR_DLAB = 0x80;
const MCR_DTR = 0x01;
const MCR_RTS = 0x02;
const MCR_OUT1 = 0x04;
const MCR_OUT2 = 0x08;
const MCR_LOOP = 0x10;
const LSR_DR = 0x01;
const LSR_THRE = 0x20;
const LSR_TEMT = 0x40;
const MSR_CTS = 0x10;
const MSR_DSR = 0x20;
const MSR_RI = 0x40;
const MSR_DCD = 0x80;
const MSR_DELTAS = 0x0f;

const FIFO_SIZE = 16;

export interface Uart16550Options {
  /** Raises the UART's interrupt line (edge): typically an irqfd signal. */
  interrupt: () => void;
  /** Host input for the guest to receive. */
  input$?: Observable<Uint8Array>;
}

export class Uart16550 implements PortHandler {
  private readonly out = new Subject<Uint8Array>();
  /** Bytes the guest transmits (one emission per THR write). Completes on close(). */
  readonly output$: Observable<Uint8Array> = this.out.asObservable();

  private ier = 0;
  private lcr = 0x03; // 8N1
  private mcr = MCR_OUT2;
  private scr = 0;
  private dll = 0x0c; // 9600 baud
  private dlm = 0;
  private fifoEnabled = false;
  private msrDeltas = 0;
  private thrEmptyPending = false;
  private lineHigh = false;
  private lastRx = 0;

  // Host-side receive buffer: chunks, offset into the first.
  private rxChunks: Uint8Array[] = [];
  private rxOffset = 0;
  private rxQueued = 0;
  private inputSub: Subscription | null = null;
  private readonly raise: () => void;

  constructor(options: Uart16550Options) {
    this.raise = options.interrupt;
    if (options.input$) this.inputSub = options.input$.subscribe((bytes) => this.receive(bytes));
  }

  /** Queues host bytes for the guest (copied). */
  receive(bytes: Uint8Array): void {
    if (bytes.length === 0) return;
    this.enqueue(bytes.slice());
  }

  /** Bytes waiting for the guest, FIFO and host buffer together. */
  get pendingInput(): number {
    return this.rxQueued;
  }

  read(offset: number, data: Uint8Array): void {
    // Wider accesses read the first register and zeros (the chip decodes byte accesses only).
    data.fill(0);
    data[0] = this.readRegister(offset);
  }

  write(offset: number, data: Uint8Array): void {
    this.writeRegister(offset, data[0]!);
  }

  close(): void {
    this.inputSub?.unsubscribe();
    this.inputSub = null;
    this.out.complete();
  }

  private readRegister(offset: number): number {
    const dlab = (this.lcr & LCR_DLAB) !== 0;
    switch (offset) {
      case RBR_THR_DLL: {
        if (dlab) return this.dll;
        if (this.rxQueued > 0) this.lastRx = this.dequeue();
        this.update();
        return this.lastRx;
      }
      case IER_DLM: return dlab ? this.dlm : this.ier;
      case IIR_FCR: {
        const iir = this.interruptId();
        if (iir === IIR_THRI) this.thrEmptyPending = false; // reading IIR acknowledges THRE
        this.update();
        return iir | (this.fifoEnabled ? IIR_FIFO_ENABLED : 0);
      }
      case LCR: return this.lcr;
      case MCR: return this.mcr;
      case LSR: return (this.rxQueued > 0 ? LSR_DR : 0) | LSR_THRE | LSR_TEMT;
      case MSR: {
        const value = this.modemStatus() | this.msrDeltas;
        this.msrDeltas = 0;
        this.update();
        return value;
      }
      case SCR: return this.scr;
      default: return 0xff;
    }
  }

  private writeRegister(offset: number, value: number): void {
    const dlab = (this.lcr & LCR_DLAB) !== 0;
    switch (offset) {
      case RBR_THR_DLL:
        if (dlab) {
          this.dll = value;
          return;
        }
        if (this.mcr & MCR_LOOP) this.enqueue(Uint8Array.of(value));
        else this.out.next(Uint8Array.of(value));
        this.thrEmptyPending = true; // sent at once: THR is empty again
        this.update();
        return;
      case IER_DLM: {
        if (dlab) {
          this.dlm = value;
          return;
        }
        const enabled = value & 0x0f;
        if (enabled & IER_THRI && !(this.ier & IER_THRI)) this.thrEmptyPending = true;
        this.ier = enabled;
        this.update();
        return;
      }
      case IIR_FCR:
        this.fifoEnabled = (value & FCR_ENABLE) !== 0;
        if (value & FCR_CLEAR_RX) this.discard(this.fifoEnabled ? FIFO_SIZE : 1);
        this.update();
        return;
      case LCR: this.lcr = value; return;
      case MCR: {
        const before = this.modemStatus();
        this.mcr = value & 0x1f;
        const after = this.modemStatus();
        // Delta bits: DCTS, DDSR, trailing-edge RI, DDCD.
        const changed = before ^ after;
        this.msrDeltas |= ((changed & MSR_CTS) ? 0x01 : 0) | ((changed & MSR_DSR) ? 0x02 : 0)
          | ((before & MSR_RI) && !(after & MSR_RI) ? 0x04 : 0) | ((changed & MSR_DCD) ? 0x08 : 0);
        this.msrDeltas &= MSR_DELTAS;
        this.update();
        return;
      }
      case SCR: this.scr = value; return;
      default: return; // LSR and MSR are read-only
    }
  }

  /** Modem inputs: looped back from MCR in loopback mode, otherwise a connected peer. */
  private modemStatus(): number {
    if (this.mcr & MCR_LOOP) {
      return ((this.mcr & MCR_RTS) ? MSR_CTS : 0) | ((this.mcr & MCR_DTR) ? MSR_DSR : 0)
        | ((this.mcr & MCR_OUT1) ? MSR_RI : 0) | ((this.mcr & MCR_OUT2) ? MSR_DCD : 0);
    }
    return MSR_DCD | MSR_DSR | MSR_CTS;
  }

  /** IIR's low nibble: the highest-priority enabled pending condition (line status never occurs). */
  private interruptId(): number {
    if (this.ier & IER_RDI && this.rxQueued > 0) return IIR_RDI;
    if (this.ier & IER_THRI && this.thrEmptyPending) return IIR_THRI;
    if (this.ier & IER_MSI && this.msrDeltas !== 0) return IIR_MSI;
    return IIR_NONE;
  }

  private update(): void {
    const high = this.interruptId() !== IIR_NONE;
    if (high && !this.lineHigh) {
      this.lineHigh = true;
      this.raise();
    } else if (!high) {
      this.lineHigh = false;
    }
  }

  private enqueue(bytes: Uint8Array): void {
    this.rxChunks.push(bytes);
    this.rxQueued += bytes.length;
    this.update();
  }

  private dequeue(): number {
    const chunk = this.rxChunks[0]!;
    const byte = chunk[this.rxOffset++]!;
    this.rxQueued--;
    if (this.rxOffset === chunk.length) {
      this.rxChunks.shift();
      this.rxOffset = 0;
    }
    return byte;
  }

  private discard(count: number): void {
    for (let i = 0; i < count && this.rxQueued > 0; i++) this.dequeue();
  }
}
