#!/usr/bin/env bash
# A real boot from `strata nbd`: qemu-system-x86_64 (software emulation unless /dev/kvm)
# boots the host's Debian kernel and initramfs, plus a small init of ours appended to it,
# with the NBD export as its virtio disk through an overlay. The guest hashes the disk's
# first 8 MiB, writes a marker sector and powers off; the host then checks the hash
# against the image, the marker in the overlay (qemu-io), the overlay with qemu-img
# check, and that the image itself did not change.
#
#   bash e2e/nbd-boot.sh            (after npm run build; takes a minute or two under TCG)
set -euo pipefail
cd "$(dirname "$0")/.."
KERNEL=${KERNEL:-$(ls /boot/vmlinuz-* | sort -V | tail -1)}
INITRD=${INITRD:-/boot/initrd.img-${KERNEL#/boot/vmlinuz-}}
WORK=$(mktemp -d /tmp/strata-boot.XXXXXX)
trap 'kill "${SERVER:-}" 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$WORK"' EXIT

# The disk: 8 MiB of random bytes at the start of a 64 MiB qcow2.
head -c $((8 << 20)) /dev/urandom > "$WORK/head.bin"
qemu-img create -q -f raw "$WORK/disk.raw" 64M
dd if="$WORK/head.bin" of="$WORK/disk.raw" conv=notrunc status=none
qemu-img convert -O qcow2 "$WORK/disk.raw" "$WORK/disk.qcow2"
want=$(sha256sum < "$WORK/head.bin" | cut -d' ' -f1)
before=$(sha256sum < "$WORK/disk.qcow2")

# Our init, appended to the distribution's initramfs as a second cpio archive.
mkdir -p "$WORK/root"
cat > "$WORK/root/strata-init" <<'INIT'
#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in virtio_pci virtio_blk; do modprobe "$m" 2>/dev/null; done
i=0; while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
echo "STRATA-HASH $(head -c 8388608 /dev/vda | sha256sum | cut -d' ' -f1)"
mkdir -p /tmp; printf "strata-was-here" > /tmp/marker
dd if=/tmp/marker of=/dev/vda bs=512 seek=40000 conv=notrunc 2>&1; echo "STRATA-DD $?"
sync
echo "STRATA-DONE"
poweroff -f
INIT
chmod +x "$WORK/root/strata-init"
(cd "$WORK/root" && echo strata-init | cpio -o -H newc --quiet) > "$WORK/extra.cpio"
# the kernel looks for a following archive only at a 4-byte aligned offset: pad the initrd first
pad=$(( (4 - $(stat -c %s "$INITRD") % 4) % 4 ))
{ cat "$INITRD"; head -c "$pad" /dev/zero; cat "$WORK/extra.cpio"; } > "$WORK/initrd"

node dist/cli/strata.cjs nbd "$WORK/disk.qcow2" --port 0 --overlay "$WORK/overlay.qcow2" > "$WORK/uri" &
SERVER=$!
for _ in $(seq 100); do [ -s "$WORK/uri" ] && break; sleep 0.1; done
URI=$(head -1 "$WORK/uri" | cut -f1)
# kvm_pvm's /dev/kvm boots only PVM guest kernels: a stock kernel hangs there silently
ACCEL=tcg; [ -w /dev/kvm ] && { [ ! -d /sys/module/kvm_pvm ] || [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]; } && ACCEL=kvm
start=$(date +%s)
timeout 900 qemu-system-x86_64 -machine accel=$ACCEL -m 512 -nographic -no-reboot \
  -kernel "$KERNEL" -initrd "$WORK/initrd" -append "console=ttyS0 rdinit=/strata-init quiet panic=-1 no_timer_check" \
  -drive "file=$URI,format=raw,if=virtio" | tee "$WORK/console" | grep STRATA || true
secs=$(( $(date +%s) - start ))
kill -TERM "$SERVER"; wait "$SERVER" || true; SERVER=

got=$(grep -a -o 'STRATA-HASH [0-9a-f]*' "$WORK/console" | cut -d' ' -f2)
[ "$got" = "$want" ] || { echo "FAIL: guest read $got, image holds $want"; exit 1; }
qemu-io -f qcow2 -c 'read -v 20480000 15' "$WORK/overlay.qcow2" | grep -q '73 74 72 61 74 61 2d 77 61 73 2d 68 65 72 65' || { echo 'FAIL: marker not in overlay'; exit 1; }
qemu-img check -q "$WORK/overlay.qcow2"
[ "$(sha256sum < "$WORK/disk.qcow2")" = "$before" ] || { echo 'FAIL: image changed'; exit 1; }
echo "{\"e2e\":\"nbd-boot\",\"ok\":true,\"accel\":\"$ACCEL\",\"seconds\":$secs,\"kernel\":\"$(basename "$KERNEL")\"}"
