#!/bin/sh
# rxvirt guest /init (PID 1 of the initramfs): mounts proc, sys and devtmpfs,
# runs what the kernel command line asks for, then ends the VM.
#   rxvirt.script=NAME   run /scripts/NAME.sh (default: shell)
#   rxvirt.cmd=BASE64    run this shell command line instead (for tests)
# Prints "rxvirt.exit=N" with the exit status, then reboots with -f: with no
# ACPI there is no power-off device, so the kernel's `poweroff -f` would only
# halt; a reboot (triple fault with reboot=t) ends QEMU -no-reboot and any VMM
# cleanly. Never exits: PID 1 exiting is a kernel panic.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root TERM=linux

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null # already there if the kernel mounted it

script=shell
cmd=
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    rxvirt.script=*) script=${arg#rxvirt.script=} ;;
    rxvirt.cmd=*) cmd=${arg#rxvirt.cmd=} ;;
  esac
done

if [ -n "$cmd" ]; then
  if decoded=$(echo "$cmd" | base64 -d 2>/dev/null) && [ -n "$decoded" ]; then
    sh -c "$decoded"
    rc=$?
  else
    echo "rxvirt: rxvirt.cmd= is not valid base64" >&2
    rc=2
  fi
else
  case "$script" in
    *[!A-Za-z0-9_-]*|'') rc=2; echo "rxvirt: bad rxvirt.script name '$script'" >&2 ;;
    *)
      if [ -f "/scripts/$script.sh" ]; then
        sh "/scripts/$script.sh"
        rc=$?
      else
        echo "rxvirt: no script '$script' (have: $(cd /scripts && ls | sed 's/\.sh$//' | tr '\n' ' '))" >&2
        rc=127
      fi
      ;;
  esac
fi

echo "rxvirt.exit=$rc"
sync
while :; do reboot -f; sleep 1; done
