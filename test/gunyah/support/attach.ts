// Wires a virtio device to a VM the way any VMM on the runtime interfaces does (nothing here is
// Gunyah-specific): a virtio-mmio transport on the VM's MMIO bus, its interrupt through an irqfd
// and an EventFdDoorbell, and one ioeventfd per queue notification feeding transport.notify().

import type { Subscription } from 'rxjs';
import { EventFdDoorbell } from '../../../framework/doorbell.ts';
import { EventFd } from '../../../framework/eventfd.ts';
import type { IrqFdBinding, Registration, Vm } from '../../../framework/vm/hypervisor.ts';
import type { VirtioMmioSlot } from '../../../framework/vm/gunyah/arm64-layout.ts';
import type { VirtioDevice } from '../../../framework/virtio/device.ts';
import { VirtioMmioTransport } from '../../../transports/virtio-mmio/mmio-transport.ts';

export interface AttachedDevice {
  readonly transport: VirtioMmioTransport;
  readonly slot: VirtioMmioSlot;
  readonly irqfd: EventFd;
  readonly binding: IrqFdBinding;
  readonly doorbell: EventFdDoorbell;
  /** The eventfds queue notifications arrive on, by queue index. */
  readonly notifyFds: EventFd[];
  /** Notifications delivered per queue. */
  readonly notified: number[];
  close(): void;
}

export function attachVirtioMmio(vm: Vm, device: VirtioDevice, slot: VirtioMmioSlot, name = `virtio-${device.type}`): AttachedDevice {
  const irqfd = EventFd.create();
  const binding = vm.addIrqFd(slot.spi, irqfd, { level: slot.level });
  const doorbell = new EventFdDoorbell(binding.irqfd, binding.mode, binding.resample);
  const transport = new VirtioMmioTransport(device, { base: slot.base, irq: slot.spi, memory: () => vm.memory, doorbell });
  vm.mmio.register(slot.base, transport.size, transport, name);
  const notifyFds: EventFd[] = [];
  const notified: number[] = [];
  const registrations: Registration[] = [];
  const subscriptions: Subscription[] = [];
  for (const n of transport.notifyRegistrations()) {
    const fd = EventFd.create();
    notifyFds[n.queueIndex] = fd;
    notified[n.queueIndex] = 0;
    registrations.push(vm.addIoEventFd({ address: n.address, length: n.length, datamatch: n.datamatch }, fd));
    subscriptions.push(fd.events().subscribe(() => {
      notified[n.queueIndex]!++;
      transport.notify(n.queueIndex);
    }));
  }
  return {
    transport, slot, irqfd, binding, doorbell, notifyFds, notified,
    close() {
      for (const s of subscriptions) s.unsubscribe();
      for (const r of registrations) r.remove();
      binding.remove();
      doorbell.close();
      for (const fd of notifyFds) fd.close();
      irqfd.close();
    },
  };
}
