#!/usr/bin/env bash
# What the test suite needs beyond Python packages: OpenSSH's sshd for the interop tests, and
# sudo for the probe's "logged in as a user, run as root through sudo" tests (the normal TPU VM
# set-up). Installed from Debian's packages when missing and when we may (root or passwordless
# sudo); otherwise those tests skip and say why. Never fails the build by itself.
set -u
missing=()
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v sudo >/dev/null 2>&1 || missing+=(sudo)
if [ ${#missing[@]} = 0 ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-test-deps: no apt-get here; tests needing ${missing[*]} will be skipped" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    if sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
        echo "install-test-deps: not root and no passwordless sudo; tests needing" \
            "${missing[*]} will skip" >&2
        exit 0
    fi
fi
echo "install-test-deps: installing ${missing[*]} (Debian packages) for the tests" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null 2>&1 || true
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
    || echo "install-test-deps: could not install ${missing[*]}; tests needing them will skip" >&2
exit 0
