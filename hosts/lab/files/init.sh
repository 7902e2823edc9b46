#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/shm
mount -t tmpfs -o size=90% tmpfs /dev/shm
dirty_mb=0
dirty_sleep=1
pattern_mb=16
pattern_every=5
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    dirty_mb=*) dirty_mb=${arg#dirty_mb=} ;;
    dirty_sleep=*) dirty_sleep=${arg#dirty_sleep=} ;;
    pattern_mb=*) pattern_mb=${arg#pattern_mb=} ;;
    pattern_every=*) pattern_every=${arg#pattern_every=} ;;
  esac
done
now() { cut -d' ' -f1 /proc/uptime; }
# A memory pattern that must survive migrations: its checksum at boot, then the
# same checksum again every few seconds, wherever the guest runs by then. The
# boot id tells this boot's lines from an older boot's in a host's serial log.
boot_id=$(cat /proc/sys/kernel/random/boot_id)
dd if=/dev/urandom of=/dev/shm/pattern bs=1M count="$pattern_mb" 2>/dev/null
summed_from=$(now)
pattern_sum=$(md5sum /dev/shm/pattern)
summed_to=$(now)
echo "PATTERN sum=${pattern_sum%% *} boot=$boot_id mib=$pattern_mb md5_s=$(awk "BEGIN { print $summed_to - $summed_from }")"
(
  while true; do
    sleep "$pattern_every"
    pattern_sum=$(md5sum /dev/shm/pattern)
    read -r up _ </proc/uptime
    echo "pattern sum=${pattern_sum%% *} boot=$boot_id uptime=$up"
  done
) &
echo "GUEST-READY uptime=$(now) dirty_mb=$dirty_mb dirty_sleep=$dirty_sleep"
if [ "$dirty_mb" -gt 0 ]; then
  # QEMU's page-sampling dirty rate compares page hashes at the start and the
  # end of its window, so content that comes back reads as clean: with two
  # buffers copied in turn, a 2-s window over two rounds measured ~0. Instead
  # each round copies a view of one random buffer shifted by another 64 KiB:
  # the same content returns only after 64 rounds (64 x 64 KiB: the 4 MiB extra).
  dd if=/dev/urandom of=/dev/shm/src bs=1M count=$((dirty_mb + 4)) 2>/dev/null
  echo "GUEST-DIRTY-START uptime=$(now)"
  (
    round=0
    while true; do
      dd if=/dev/shm/src of=/dev/shm/buf bs=64k count=$((dirty_mb * 16)) skip=$((round % 64)) conv=notrunc 2>/dev/null
      round=$((round + 1))
      [ $((round % 10)) -eq 0 ] && echo "round $round uptime=$(now)"
      sleep $dirty_sleep
    done
  ) &
fi
# `read` is a shell builtin: no fork per tick, so an idle guest stays nearly clean.
while true; do read -r up _ </proc/uptime; echo "tick uptime=$up"; sleep 1; done
