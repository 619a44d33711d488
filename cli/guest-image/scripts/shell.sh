#!/bin/sh
# Interactive shell on the console: on the virtio console (hvc0) when the VM
# has one, else on the kernel console (serial). Leaving the shell ends the VM.
if [ -c /dev/hvc0 ]; then
  echo "rxvirt: shell on hvc0 (exit to power off)"
  exec setsid -c sh -l </dev/hvc0 >/dev/hvc0 2>&1
fi
echo "rxvirt: shell on the console (exit to power off)"
exec setsid cttyhack sh -l
