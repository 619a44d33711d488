// The legacy PC devices every x86 VM gets, wired to any x86 backend: COM1 (16550 UART on
// 0x3f8, IRQ 4 through an edge irqfd) and the i8042 reset line (the VM ends with outcome
// 'reset'). The PIC, IOAPIC and PIT live in the hypervisor; ports nobody claims (0x80 delays,
// absent devices) are ignored by the port bus.

import type { Observable } from 'rxjs';
import { EventFd } from '../../eventfd.ts';
import type { Vm } from '../hypervisor.ts';
import { I8042 } from './i8042.ts';
import type { PortBus } from './port-bus.ts';
import { COM1_IRQ, COM1_PORT, UART_PORT_COUNT, Uart16550 } from './uart-16550.ts';

/** A VM with an x86 port-I/O space. */
export interface PortIoVm extends Vm {
  readonly ports: PortBus;
}

export interface PcLegacyOptions {
  /** Host bytes for the guest's serial console. */
  serialInput$?: Observable<Uint8Array>;
}

export interface PcLegacyDevices {
  readonly uart: Uart16550;
  readonly i8042: I8042;
  /** Completes the UART output and closes the interrupt eventfd. */
  close(): void;
}

export function attachPcLegacyDevices(vm: PortIoVm, options: PcLegacyOptions = {}): PcLegacyDevices {
  const uartIrq = EventFd.create();
  const binding = vm.addIrqFd(COM1_IRQ, uartIrq, { level: false });
  const uart = new Uart16550({ interrupt: () => uartIrq.signal(), input$: options.serialInput$ });
  vm.ports.register(COM1_PORT, UART_PORT_COUNT, uart, 'COM1');
  const i8042 = new I8042(() => void vm.finish({ kind: 'reset', reason: 'i8042 reset' }));
  i8042.attach(vm.ports);
  return {
    uart,
    i8042,
    close() {
      uart.close();
      binding.remove();
      uartIrq.close();
    },
  };
}
