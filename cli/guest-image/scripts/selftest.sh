#!/bin/sh
# Boot self-test: checks what every rxvirt guest relies on, then prints one
# marker line, "rxvirt-selftest: ok ..." or "rxvirt-selftest: FAIL <what>".
fail=
[ -r /proc/cmdline ] || fail="$fail proc"
[ -d /sys/class ] || fail="$fail sysfs"
[ -c /dev/console ] || fail="$fail /dev/console"
[ -c /dev/null ] || fail="$fail devtmpfs"
[ "$(echo 6 7 | awk '{ print $1 * $2 }')" = 42 ] || fail="$fail busybox"
virtio=$(ls /sys/bus/virtio/devices 2>/dev/null | wc -l)
if [ -z "$fail" ]; then
  echo "rxvirt-selftest: ok kernel=$(uname -r) cpus=$(grep -c ^processor /proc/cpuinfo) virtio-devices=$virtio"
else
  echo "rxvirt-selftest: FAIL$fail"
  exit 1
fi
