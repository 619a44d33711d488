// A custom device, defined right here and attached to a VM. It is a virtio entropy device (so
// the guest's stock virtio-rng driver binds to it) whose "entropy" is a message from the host,
// repeated: the guest reads it from /dev/hwrng. Everything device-specific is the class below:
// its type, one queue and what it does with each buffer the driver posts; negotiation, rings,
// notifications (ioeventfd) and interrupts (irqfd) come from the framework and the transport.
// Run with `npx tsx examples/custom-device.ts`.

import { ensureGuestImage } from '../cli/guest-image/guest-image.ts';
import type { DescriptorChain } from '../framework/virtio/descriptor-chain.ts';
import { VIRTIO_ID_ENTROPY } from '../framework/virtio/constants.ts';
import { VirtioDevice, queue } from '../framework/virtio/device.ts';
import { createMachine } from '../framework/vm/machine.ts';
import { VirtioMmioTransport } from '../transports/virtio-mmio/mmio-transport.ts';

/** Fills every buffer the guest posts with `message`, continuing where the last one stopped. */
class MessageSource extends VirtioDevice {
  readonly type = VIRTIO_ID_ENTROPY;
  readonly queues = [queue('requestq', 64, (requests) => requests.serve((chain) => this.fill(chain)))];
  requests = 0;
  private offset = 0;

  constructor(private readonly message: Uint8Array) {
    super();
  }

  /** Returns the bytes written into the chain's device-writable buffers (guest memory, no copy). */
  private fill(chain: DescriptorChain): number {
    this.requests++;
    let written = 0;
    for (const buffer of chain.writable) {
      for (let i = 0; i < buffer.length; i++) {
        buffer[i] = this.message[this.offset]!;
        this.offset = (this.offset + 1) % this.message.length;
      }
      written += buffer.length;
    }
    return written;
  }
}

const image = await ensureGuestImage();
const device = new MessageSource(Buffer.from('hello from a device written in TypeScript. '));
const vm = await createMachine({ memory: '256M', transport: VirtioMmioTransport });
vm.serial$.subscribe((bytes) => process.stdout.write(bytes));
const attached = vm.attach(device, 'message-source');
console.error(`device at 0x${attached.base.toString(16)}, IRQ ${attached.irq}; booting (a minute or two where KVM is kvm_pvm)`);

const script = 'echo "driver: $(cat /sys/class/misc/hw_random/rng_current)"; head -c 132 /dev/hwrng; echo';
await vm.boot({ kernel: image.vmlinux, initrd: image.initramfs, cmdline: `quiet rxvirt.cmd=${Buffer.from(script).toString('base64')}` });
const outcome = await vm.exited;
await vm.close();
console.error(`VM ended: ${outcome.kind}; the device served ${device.requests} requests, notified ${attached.notifications[0]} times through its ioeventfd`);
