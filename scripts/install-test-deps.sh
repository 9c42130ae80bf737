#!/usr/bin/env bash
# What the test suite needs beyond Python packages: OpenSSH's sshd for the interop tests.
# Installed from Debian's packages when missing and when we may (root or passwordless sudo);
# otherwise the interop tests skip and say why. Never fails the build by itself.
set -u
if [ -x /usr/sbin/sshd ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-test-deps: no apt-get here; OpenSSH interop tests will be skipped" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    if sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
        echo "install-test-deps: not root and no passwordless sudo; interop tests will skip" >&2
        exit 0
    fi
fi
echo "install-test-deps: installing openssh-server (Debian package) for the interop tests" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null 2>&1 || true
$SUDO apt-get install -y -qq --no-install-recommends openssh-server >/dev/null 2>&1 \
    || echo "install-test-deps: could not install openssh-server; interop tests will skip" >&2
exit 0
