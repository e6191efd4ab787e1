#!/bin/sh
# initramfs-tools hook of assembler's Debian images (/etc/initramfs-tools/hooks/assembler-trim): leaves udev's
# hardware database (hwdb.bin, 13 MB on trixie) out of the initramfs. Nothing there needs it to find and mount
# the root disk (it names vendors and maps keys); the root filesystem's own copy serves the booted system. The
# kernel unpacks 13 MB less before /init (seconds under emulation), and the boot loader reads a smaller file.
PREREQ="udev"
prereqs() { echo "$PREREQ"; }
case "$1" in
    prereqs) prereqs; exit 0 ;;
esac
rm -f "${DESTDIR}/usr/lib/udev/hwdb.bin" "${DESTDIR}/lib/udev/hwdb.bin" "${DESTDIR}/etc/udev/hwdb.bin"
