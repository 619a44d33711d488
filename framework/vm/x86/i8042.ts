// The i8042 keyboard controller as far as a VMM needs it: the guest's way to reset the machine
// (command 0xfe on port 0x64, or clearing bit 0 of the output port through command 0xd1), and
// enough of the command set (read/write the configuration byte) that a guest kernel's probe
// finds a controller with nothing attached instead of waiting for timeouts. No keyboard, no mouse.

import type { PortBus, PortHandler } from './port-bus.ts';

export const I8042_DATA_PORT = 0x60;
export const I8042_COMMAND_PORT = 0x64;

const STATUS_OBF = 0x01; // output buffer full: data waits at port 0x60
const STATUS_SYS = 0x04; // system flag, set after self-test
const STATUS_CMD = 0x08; // last write was a command

const CMD_READ_CTR = 0x20;
const CMD_WRITE_CTR = 0x60;
const CMD_SELF_TEST = 0xaa;
const CMD_WRITE_OUTPUT = 0xd1;
const CMD_RESET = 0xfe;

export class I8042 {
  private ctr = 0x00;
  private status = STATUS_SYS;
  private outputByte = 0;
  private pendingCommand = 0;

  /** `reset` is called when the guest resets the machine (once per request). */
  constructor(private readonly reset: () => void) {}

  /** Claims ports 0x60 and 0x64 on `bus`. */
  attach(bus: PortBus): void {
    bus.register(I8042_DATA_PORT, 1, this.dataPort, 'i8042 data');
    bus.register(I8042_COMMAND_PORT, 1, this.commandPort, 'i8042 command');
  }

  private readonly dataPort: PortHandler = {
    read: (_offset, data) => {
      data.fill(0);
      data[0] = this.outputByte;
      this.status &= ~STATUS_OBF;
    },
    write: (_offset, data) => {
      const value = data[0]!;
      this.status &= ~STATUS_CMD;
      const command = this.pendingCommand;
      this.pendingCommand = 0;
      if (command === CMD_WRITE_CTR) this.ctr = value;
      else if (command === CMD_WRITE_OUTPUT && (value & 1) === 0) this.reset();
      // Bytes for the (absent) keyboard are dropped.
    },
  };

  private readonly commandPort: PortHandler = {
    read: (_offset, data) => {
      data.fill(0);
      data[0] = this.status;
    },
    write: (_offset, data) => {
      const command = data[0]!;
      this.status |= STATUS_CMD;
      switch (command) {
        case CMD_READ_CTR: this.respond(this.ctr); return;
        case CMD_SELF_TEST: this.respond(0x55); return;
        case CMD_WRITE_CTR:
        case CMD_WRITE_OUTPUT: this.pendingCommand = command; return;
        case CMD_RESET: this.reset(); return;
        default: return; // enable/disable ports and the rest: accepted, no effect
      }
    },
  };

  private respond(value: number): void {
    this.outputByte = value;
    this.status |= STATUS_OBF;
  }
}
