#!/usr/bin/env bash
# Makes a deliberately broken copy of the shmring .deb, to show that the VM test's package
# checks can fail: `bash tests/systemd-vm/break-package.sh GOOD.deb BROKEN.deb [SET]`, then
# `SHMRING_VM_DEB=BROKEN.deb bash tests/systemd-vm/run.sh` (SHMRING_VM_ONLY for a quick run:
# see README.md) must FAIL the checks of the SET, each for its own break.
#
# SET `checks` (the default), one break per check; the other checks pass:
#
# | check                   | the break                                                      |
# |-------------------------|----------------------------------------------------------------|
# | package-install         | the man page of `shmctl peek` and the example mpmc.toml left out |
# | reload-refused-warns    | the units' ExecReload= without the `refused` case (exits 0)    |
# | enabled-after-reboot    | producerd.service without its [Install] section (enable fails) |
# | package-remove          | prerm without its `systemctl stop` (the daemons keep running)  |
# | package-reinstall       | postinst without `deb-systemd-helper unmask` (stays masked)    |
# | package-purge           | postrm without `rm -rf /var/lib/shmring` on purge              |
#
# SET `remove-mask`: postrm without `deb-systemd-helper mask` on remove. package-remove
# (list-unit-files) and removed-after-reboot (the units not masked at the next boot) fail.
# A set of its own: without the mask, the `checks` set's postinst break (no unmask) has
# nothing to show.
set -euo pipefail
[[ $# == 2 || $# == 3 ]] || { echo "usage: $0 GOOD.deb BROKEN.deb [checks|remove-mask]" >&2; exit 64; }
set=${3:-checks}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dpkg-deb -R "$1" "$work/pkg"
# gone PATTERN FILE...: the break took PATTERN out of the FILEs, so it changed something
# (a bare `! grep` would not stop this script: set -e ignores a negated command).
gone() {
    local pattern=$1
    shift
    if grep -q -- "$pattern" "$@"; then echo "break-package.sh: '$pattern' is still in $*" >&2; exit 1; fi
}
case $set in
checks)
    rm "$work/pkg/usr/share/man/man1/shmctl-peek.1.gz" "$work/pkg/usr/share/doc/shmring/examples/mpmc.toml"
    sed -i 's/^    systemctl --system stop .*/    : # break-package.sh: no stop/' "$work/pkg/DEBIAN/prerm"
    sed -i '/deb-systemd-helper unmask "$unit"/d' "$work/pkg/DEBIAN/postinst"
    sed -i 's/; case "$(cat "$f")" in \*refused) .*;; esac'"'"'$/'"'"'/' "$work"/pkg/lib/systemd/system/*.service
    sed -i '/^\[Install\]$/,$d' "$work/pkg/lib/systemd/system/producerd.service"
    sed -i '/^    rm -rf \/var\/lib\/shmring$/d' "$work/pkg/DEBIAN/postrm"
    gone 'refused)' "$work"/pkg/lib/systemd/system/*.service
    gone '^\[Install\]' "$work/pkg/lib/systemd/system/producerd.service"
    gone 'rm -rf /var/lib/shmring' "$work/pkg/DEBIAN/postrm"
    gone 'systemctl --system stop' "$work/pkg/DEBIAN/prerm"
    gone 'deb-systemd-helper unmask "$unit"' "$work/pkg/DEBIAN/postinst"
    ;;
remove-mask)
    sed -i 's/^    deb-systemd-helper mask \$UNITS .*/    : # break-package.sh: no mask/' "$work/pkg/DEBIAN/postrm"
    gone 'deb-systemd-helper mask' "$work/pkg/DEBIAN/postrm"
    ;;
*) echo "$0: no break set '$set' (checks, remove-mask)" >&2; exit 64 ;;
esac
# The maintainer scripts still valid: each check must fail for its own break.
for script in prerm postinst postrm; do sh -n "$work/pkg/DEBIAN/$script"; done
dpkg-deb --root-owner-group -b "$work/pkg" "$2" >/dev/null
echo "$2"
