#!/usr/bin/env bash
# A guest whose root file system is a Strata mount of a library version, over virtio-fs:
# a small root tree (busybox-static, an init, a marker file) is made into an ext4 image by
# mkfs.ext4 -d, checked into a fresh library, and served by `strata virtiofs` (qemu's
# virtiofsd on a read-only Strata FUSE mount of the version's file manifest). qemu boots the
# host's Debian kernel and initramfs plus a small init of ours that loads virtiofs, mounts
# the tag and switch_roots into it; the root's own /init prints the marker's hash and what
# it sees, then powers off. The host checks the marker on the serial console.
#
#   bash e2e/virtiofs-boot.sh        (after npm run build; as root; a minute or two under TCG)
set -euo pipefail
cd "$(dirname "$0")/.."
KERNEL=${KERNEL:-$(ls /boot/vmlinuz-* | sort -V | tail -1)}
KVER=${KERNEL#/boot/vmlinuz-}
INITRD=${INITRD:-/boot/initrd.img-$KVER}
VIRTIOFS_KO=${VIRTIOFS_KO:-$(find "/lib/modules/$KVER" -name 'virtiofs.ko*' | head -1)}
BUSYBOX=${BUSYBOX:-$(command -v busybox)}
WORK=$(mktemp -d /tmp/strata-vfs-boot.XXXXXX)
trap 'kill "${SERVER:-}" 2>/dev/null || true; wait 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$WORK"' EXIT
[ -n "$VIRTIOFS_KO" ] || { echo "FAIL: no virtiofs module for $KVER"; exit 1; }
file -L "$BUSYBOX" | grep -q 'statically linked' || { echo "FAIL: $BUSYBOX is not static (busybox-static)"; exit 1; }

# The guest's root: busybox, an init, a marker; into ext4, into a library.
R="$WORK/rootfs"
mkdir -p "$R/bin" "$R/etc" "$R/proc" "$R/sys" "$R/dev" "$R/tmp"
cp "$BUSYBOX" "$R/bin/busybox"
for t in sh cat sha256sum mount ls poweroff echo stat grep cut head; do ln -s busybox "$R/bin/$t"; done
head -c 300000 /dev/urandom > "$R/etc/marker"
want=$(sha256sum < "$R/etc/marker" | cut -d' ' -f1)
cat > "$R/init" <<'INIT'
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
echo "STRATA-ROOT $(sha256sum /etc/marker | cut -d' ' -f1)"
echo "STRATA-ROOTFS $(grep ' / ' /proc/mounts | head -1)"
echo "STRATA-DONE"
poweroff -f
INIT
chmod +x "$R/init"
truncate -s 64M "$WORK/root.img"
mkfs.ext4 -q -F -d "$R" "$WORK/root.img"
node dist/cli/strata.cjs checkin --library "$WORK/lib" --name vfsroot "$WORK/root.img" > /dev/null

# Our init in the initramfs: load virtiofs, mount the tag, switch_root into it.
mkdir -p "$WORK/extra"
cp "$VIRTIOFS_KO" "$WORK/extra/virtiofs.ko"
mkdir -p "$WORK/extra/strata-bin"
cp "$BUSYBOX" "$WORK/extra/strata-bin/busybox"   # busybox must be called busybox
cat > "$WORK/extra/strata-init" <<'INIT'
#!/strata-bin/busybox sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
B=/strata-bin/busybox
$B mkdir -p /proc /sys /dev /newroot
$B mount -t proc proc /proc; $B mount -t sysfs sys /sys; $B mount -t devtmpfs dev /dev
for m in virtio_pci fuse; do modprobe "$m" 2>/dev/null; done
$B insmod /virtiofs.ko 2>&1
i=0; until $B mount -t virtiofs -o ro strata /newroot 2>/dev/null; do
  i=$((i+1)); [ $i -gt 50 ] && { echo "STRATA-FAIL mount"; $B poweroff -f; }; $B sleep 0.2
done
echo "STRATA-MOUNTED"
$B umount /proc /sys /dev 2>/dev/null
exec $B switch_root /newroot /init
INIT
chmod +x "$WORK/extra/strata-init"
(cd "$WORK/extra" && printf 'strata-init\nstrata-bin\nstrata-bin/busybox\nvirtiofs.ko\n' | cpio -o -H newc --quiet) > "$WORK/extra.cpio"
# ours first: after the distribution's zstd-compressed archive the kernel finds no next
# archive ("Initramfs unpacking failed: invalid magic"); archives before it are unpacked too
cat "$WORK/extra.cpio" "$INITRD" > "$WORK/initrd"

node dist/cli/strata.cjs virtiofs --library "$WORK/lib" vfsroot@1 --socket "$WORK/vfs.sock" --tag strata \
  --memory 512M --json > "$WORK/qemu.json" 2> "$WORK/server.err" &
SERVER=$!
for _ in $(seq 300); do [ -s "$WORK/qemu.json" ] && [ -S "$WORK/vfs.sock" ] && break; sleep 0.1; done
[ -S "$WORK/vfs.sock" ] || { echo "FAIL: no virtiofsd socket"; cat "$WORK/server.err"; exit 1; }
mapfile -t QARGS < <(node -e 'for (const a of JSON.parse(require("fs").readFileSync(process.argv[1],"utf8")).qemu) console.log(a)' "$WORK/qemu.json")
# TCG by default: on this machine's nested KVM the guest kernel stops before its first
# console line (qemu 7.2's default CPU model; -cpu host fails setting MSR 0x10a). ACCEL=kvm to try it.
ACCEL=${ACCEL:-tcg}
start=$(date +%s)
timeout "${QEMU_TIMEOUT:-900}" qemu-system-x86_64 -machine accel=$ACCEL -nographic -no-reboot "${QARGS[@]}" \
  -kernel "$KERNEL" -initrd "$WORK/initrd" -append "console=ttyS0 rdinit=/strata-init ${APPEND:-quiet} panic=-1 no_timer_check" \
  | tee "$WORK/console" | grep -a STRATA || true
secs=$(( $(date +%s) - start ))
# virtiofsd ends with the guest; the server then unmounts and exits
for _ in $(seq 100); do kill -0 "$SERVER" 2>/dev/null || break; sleep 0.1; done
kill -TERM "$SERVER" 2>/dev/null || true; wait "$SERVER" || true; SERVER=

got=$(grep -a -o 'STRATA-ROOT [0-9a-f]*' "$WORK/console" | cut -d' ' -f2 || true)
[ "$got" = "$want" ] || { echo "FAIL: guest read ${got:-nothing}, the version holds $want"; cat "$WORK/server.err"; exit 1; }
grep -a -q 'STRATA-ROOTFS .* virtiofs ro' "$WORK/console" || { echo 'FAIL: root is not the read-only virtiofs'; exit 1; }
echo "{\"e2e\":\"virtiofs-boot\",\"ok\":true,\"accel\":\"$ACCEL\",\"seconds\":$secs,\"kernel\":\"$(basename "$KERNEL")\"}"
