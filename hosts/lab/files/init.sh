#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/shm
mount -t tmpfs -o size=90% tmpfs /dev/shm
dirty_mb=0
dirty_sleep=1
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    dirty_mb=*) dirty_mb=${arg#dirty_mb=} ;;
    dirty_sleep=*) dirty_sleep=${arg#dirty_sleep=} ;;
  esac
done
now() { cut -d' ' -f1 /proc/uptime; }
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
