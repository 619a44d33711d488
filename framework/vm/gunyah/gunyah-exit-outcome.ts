// What a GH_VCPU_EXIT_STATUS means for the VM: the resource manager could not load it (a host
// failure), it exited (power-off, reset or a fault, from exit_info.type as the resource manager
// reports it), or it crashed. Exit types are the RM's VM_EXIT notification types.

import { GH_VM_STATUS_CRASHED, GH_VM_STATUS_EXITED, GH_VM_STATUS_LOAD_FAILED, type GhStatusExit } from '../../../native/gunyah.ts';
import type { VmOutcome } from '../hypervisor.ts';
import { VmError } from '../vm-error.ts';

/** gh_vm_exit_info.type values (resource manager VM_EXIT types). */
export const GH_RM_EXIT_TYPE = Object.freeze({
  VM_EXIT: 0,
  PSCI_POWER_OFF: 1,
  PSCI_SYSTEM_RESET: 2,
  PSCI_SYSTEM_RESET2: 3,
  WDT_BITE: 4,
  HYP_ERROR: 5,
  ASYNC_EXT_ABORT: 6,
  VM_FORCE_STOPPED: 7,
});

const EXIT_TYPE_NAMES = new Map<number, string>(Object.entries(GH_RM_EXIT_TYPE).map(([name, value]) => [value, name]));

export function ghExitTypeName(type: number): string {
  return EXIT_TYPE_NAMES.get(type) ?? `exit type ${type}`;
}

function describe(exit: GhStatusExit): string {
  const { type, reasonSize, reason } = exit.exitInfo;
  const bytes = reasonSize > 0 ? ` (reason ${Array.from(reason, (b) => b.toString(16).padStart(2, '0')).join('')})` : '';
  return `${ghExitTypeName(type)}${bytes}`;
}

export function ghStatusOutcome(exit: GhStatusExit): VmOutcome {
  switch (exit.status) {
    case GH_VM_STATUS_LOAD_FAILED:
      return { kind: 'error', error: new VmError('ENOEXEC', 'Gunyah: GH_VM_STATUS_LOAD_FAILED, the resource manager could not load the VM') };
    case GH_VM_STATUS_CRASHED:
      return { kind: 'crash', reason: 'GH_VM_STATUS_CRASHED' };
    case GH_VM_STATUS_EXITED:
      switch (exit.exitInfo.type) {
        case GH_RM_EXIT_TYPE.VM_EXIT:
        case GH_RM_EXIT_TYPE.PSCI_POWER_OFF:
        case GH_RM_EXIT_TYPE.VM_FORCE_STOPPED:
          return { kind: 'poweroff', reason: describe(exit) };
        case GH_RM_EXIT_TYPE.PSCI_SYSTEM_RESET:
        case GH_RM_EXIT_TYPE.PSCI_SYSTEM_RESET2:
          return { kind: 'reset', reason: describe(exit) };
        default: // WDT_BITE, HYP_ERROR, ASYNC_EXT_ABORT and types this ABI does not name
          return { kind: 'crash', reason: describe(exit) };
      }
    default:
      return { kind: 'crash', reason: `GH_VCPU_EXIT_STATUS with unknown status ${exit.status}` };
  }
}
