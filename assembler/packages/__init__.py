"""Debian packages locked by digest: the lock file, a content-addressed package store and the locking proxy.

Every .deb and every signed index file that reaches a rootfs passes through one proxy on loopback
(`proxy.Session`): apt in mmdebstrap and in the engine's RUN steps fetches through it, it serves files from
the store (`store.PackageStore`) or fetches them from the sources (`sources.Sources`), verifies each by
sha256 and records what it served. Replaying a lock serves the lock's own signed index files, so a plain
`apt-get install PKG` resolves to the locked version on any day; a lock whose files are gone everywhere is
re-resolved against today's mirror (default) or refused (`--locked`).
"""

# apt configuration the build base carries and no image ships (the rootfs flattener and the layer index drop
# it): a replayed lock's signed InRelease may be past its Valid-Until (bookworm-security's is a week), so apt
# inside the build must not reject it; for today's state the session checks Valid-Until on the host instead.
BUILD_ONLY_APT_CONF = "etc/apt/apt.conf.d/00assembler-build-only"
BUILD_ONLY_PATHS = frozenset({BUILD_ONLY_APT_CONF})
