#!/bin/sh
# Build time only: installed as `depmod` first on the PATH that apt gives dpkg (`-o DPkg::Path=`: apt resets
# PATH for dpkg) in the Containerfile's `apt-get install`; never in the image. The kernel's postinst runs
# `depmod VERSION`, ~6 s of one core for trixie's xz-compressed modules, while dpkg waits for it. This starts
# the real depmod in the background instead, so it runs on the other core beside the configuration of the
# remaining packages (none of which loads a module in a container). The Containerfile then waits for it
# (`flock depmod.lock true`) and fails with it, before the initramfs is built. The lock is taken here, before
# returning, so a wait that starts later cannot miss a running depmod.
set -eu
dir=$(dirname "$0")
exec 9>>"${dir}/depmod.lock"
flock 9
{ /sbin/depmod "$@" || echo "depmod $*: exit status $?" >> "${dir}/depmod.failed"; } < /dev/null >> "${dir}/depmod.log" 2>&1 &
