#!/usr/bin/env bash
# Idempotent set-up on Debian 12: apt packages, the venv (with system site packages for python3-guestfs),
# and a running container engine. Safe to run again: it only installs what is missing.
# `setup.sh --system` stops after the host tools (apt): what the assembler container image installs.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  docker.io mmdebstrap qemu-utils qemu-system-x86 ovmf libguestfs-tools python3-guestfs python3-venv
  linux-image-amd64 dosfstools mtools gdisk fdisk e2fsprogs skopeo umoci xorriso grub-pc-bin
  grub-efi-amd64-bin grub-common initramfs-tools-core zstd uidmap openssh-client podman libarchive13
  ca-certificates make
  docker-registry dpkg-dev gnupg gpgv strace
  swtpm sbsigntool tpm2-tools
  qemu-user-static binfmt-support arch-test qemu-system-arm qemu-efi-aarch64
)
# mke2fs >= 1.47.1 reads the rootfs tarball directly (`mke2fs -d rootfs.tar`): reproducible ext4 without
# extracting, so no host ctimes/atimes leak in. bookworm ships 1.47.0; bookworm-backports has 1.47.2.
BACKPORTS_PACKAGES=(e2fsprogs libext2fs2 libcom-err2 libss2 logsave)

log() { printf '\033[1msetup:\033[0m %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null | grep -qx installed || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing apt packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Read the version first: `mke2fs -V | grep -q` under pipefail fails whenever grep exits before mke2fs's second
# line is written (SIGPIPE), which reinstalled backports on some runs.
mke2fs_version=$(mke2fs -V 2>&1 || true)
if ! grep -qE 'mke2fs 1\.(4[7-9]\.[1-9]|4[8-9]|[5-9])' <<<"$mke2fs_version"; then
  log "installing e2fsprogs from bookworm-backports (tarball input for mke2fs -d)"
  sources=/etc/apt/sources.list.d/bookworm-backports.sources
  if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    printf '%s\n' 'Types: deb' 'URIs: http://deb.debian.org/debian' 'Suites: bookworm-backports' \
      'Components: main' 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' | as_root tee "$sources" >/dev/null
  fi
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports \
    "${BACKPORTS_PACKAGES[@]}" >/dev/null
fi

# arm64 builds run the image's binaries through binfmt_misc and qemu-user-static (registered with the F flag:
# the interpreter is opened once, so it works inside containers too). Containers and minimal hosts have
# binfmt_misc unmounted and no systemd to register the formats.
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  as_root mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null \
    || log "cannot mount binfmt_misc: arm64 builds need it (run on a host that allows it)"
fi
if [ -e /proc/sys/fs/binfmt_misc/register ] && [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  as_root update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || log "cannot register qemu-aarch64 with binfmt_misc"
fi

# libguestfs needs a readable kernel in /boot (Debian makes it root-only by default).
as_root chmod 0644 /boot/vmlinuz-* 2>/dev/null || true
if [ "${1:-}" = "--system" ]; then
  log "host tools ready"
  exit 0
fi

stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -x .venv/bin/python ]; then
  log "creating .venv (system site packages, so python3-guestfs is importable)"
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
if [ ! -f "$stamp" ]; then
  log "installing assembler into .venv"
  .venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi

# Azurite (the Azure Storage emulator) for the publish tests, from the npm registry, into .tools/.
if [ ! -x .tools/node_modules/.bin/azurite-blob ]; then
  command -v npm >/dev/null || as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
  log "installing azurite into .tools/ (npm)"
  npm install --prefix .tools --no-audit --no-fund --silent azurite >/dev/null
fi

# A container engine: honour DOCKER_HOST; otherwise make sure Debian's dockerd answers.
if [ -z "${DOCKER_HOST:-}" ] && ! docker version >/dev/null 2>&1; then
  if [ -d /run/systemd/system ] && systemctl start docker 2>/dev/null; then
    log "started docker (systemctl)"
  else
    log "starting dockerd in the background (log: /var/log/assembler-dockerd.log)"
    as_root sh -c 'nohup dockerd --iptables=false --bridge=none --storage-driver=overlay2 \
      >/var/log/assembler-dockerd.log 2>&1 &'
  fi
  for _ in $(seq 1 60); do docker version >/dev/null 2>&1 && break; sleep 1; done
  docker version >/dev/null 2>&1 || { log "dockerd did not come up; see /var/log/assembler-dockerd.log"; exit 1; }
fi
log "ready: .venv/bin/assembler"
