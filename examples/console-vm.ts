// A console VM: the guest's shell on a virtio console (hvc0) bound to this terminal, the
// kernel log on the serial console (a file, so it does not mix with the shell). Type `exit` to
// end the VM. Run with `npx tsx examples/console-vm.ts`.

import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ensureGuestImage } from '../cli/guest-image/guest-image.ts';
import { ConsoleDevice } from '../devices/console.ts';
import { appendFileStream, stdioStream } from '../framework/io/byte-stream.ts';
import { createMachine } from '../framework/vm/machine.ts';
import { VirtioMmioTransport } from '../transports/virtio-mmio/mmio-transport.ts';

const image = await ensureGuestImage();
const serialLog = join(mkdtempSync(join(tmpdir(), 'rxvirt-console-example-')), 'serial.log');
const log = appendFileStream(serialLog);

const vm = await createMachine({ memory: '256M', cpus: 1, transport: VirtioMmioTransport });
vm.serial$.subscribe((bytes) => void log.output(bytes));
const terminal = stdioStream(); // raw mode on a TTY: keys go to the guest as typed
const console_ = new ConsoleDevice(terminal);
vm.attach(console_, 'console');

process.stderr.write(`kernel log: ${serialLog}\nbooting (a minute or two where KVM is kvm_pvm); the shell appears here\n`);
await vm.boot({ kernel: image.vmlinux, initrd: image.initramfs, cmdline: 'rxvirt.script=shell' });
const outcome = await vm.exited;
await vm.close();
console_.close(); // restores the terminal
log.close();
process.stderr.write(`\nVM ended: ${outcome.kind}\n`);
process.exit(0); // stdin may still hold the event loop open
