// Reading the model's call record in tests: ioctls with their argument structs decoded at gcc's
// offsets (independently of the backend's encoders).

import { layout, readStruct } from '../model/abi.ts';
import type { GunyahModel, ModelCall } from '../model/gunyah-model.ts';

const FIELDS: Record<string, readonly string[]> = {
  gh_userspace_memory_region: ['label', 'flags', 'guest_phys_addr', 'memory_size', 'userspace_addr'],
  gh_vm_dtb_config: ['guest_phys_addr', 'size'],
  gh_vm_firmware_config: ['guest_phys_addr', 'size'],
  gh_fn_desc: ['type', 'arg_size', 'arg'],
  gh_fn_vcpu_arg: ['id'],
  gh_fn_irqfd_arg: ['fd', 'label', 'flags', 'padding'],
  gh_fn_ioeventfd_arg: ['datamatch', 'addr', 'len', 'fd', 'flags', 'padding'],
};

const STRUCT_OF: Record<string, string> = {
  GH_VM_SET_USER_MEM_REGION: 'gh_userspace_memory_region',
  GH_VM_ANDROID_LEND_USER_MEM: 'gh_userspace_memory_region',
  GH_VM_SET_DTB_CONFIG: 'gh_vm_dtb_config',
  GH_VM_ANDROID_SET_FW_CONFIG: 'gh_vm_firmware_config',
  GH_VM_ADD_FUNCTION: 'gh_fn_desc',
  GH_VM_REMOVE_FUNCTION: 'gh_fn_desc',
};

const FN_STRUCT: Record<number, string> = { 1: 'gh_fn_vcpu_arg', 2: 'gh_fn_irqfd_arg', 3: 'gh_fn_ioeventfd_arg' };

export interface DecodedCall {
  readonly op: ModelCall['op'];
  readonly target: string;
  readonly request?: string;
  /** Integer argument, or the decoded struct fields. */
  readonly arg?: number | Record<string, bigint>;
  /** For function ioctls: the decoded function argument. */
  readonly fn?: Record<string, bigint>;
  readonly outcome?: number | string;
}

export function decode(call: ModelCall): DecodedCall {
  let arg: DecodedCall['arg'];
  let fn: DecodedCall['fn'];
  if (typeof call.arg === 'number') arg = call.arg;
  else if (call.arg && call.request && STRUCT_OF[call.request]) {
    const s = STRUCT_OF[call.request]!;
    arg = readStruct(call.arg, s, FIELDS[s]!);
    if (s === 'gh_fn_desc' && call.fnArg) {
      const fs = FN_STRUCT[Number(arg.type)];
      if (fs && call.fnArg.length === layout.size(fs)) fn = readStruct(call.fnArg, fs, FIELDS[fs]!);
    }
  }
  return { op: call.op, target: call.target, request: call.request, arg, fn, outcome: call.outcome };
}

/** Every call except GH_VCPU_RUN, decoded. */
export function setupCalls(model: GunyahModel): DecodedCall[] {
  return model.calls.filter((c) => c.op !== 'run').map(decode);
}

/** Just "target request" strings of the ioctls, for order checks. */
export function ioctlNames(model: GunyahModel): string[] {
  return model.calls.filter((c) => c.op === 'ioctl').map((c) => `${c.target} ${c.request}`);
}
