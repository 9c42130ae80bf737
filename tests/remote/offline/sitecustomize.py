"""Started in every Python the offline tests run: no connection leaves this machine.

Each attempt to resolve a name or to connect anywhere but loopback or a Unix socket is
written to $TPUCONSOLE_NETWORK_LOG and fails as an unreachable network would, so a Hugging
Face call shows up in the log whatever library made it (audit hooks see them all).
"""

import os
import socket
import sys

_LOG = os.environ.get("TPUCONSOLE_NETWORK_LOG", "")
_LOCAL = {"localhost", "127.0.0.1", "::1", "", None}


def _record(what):
    if _LOG:
        with open(_LOG, "a") as log:
            log.write(what + "\n")
    raise OSError(101, "Network is unreachable (blocked by the offline test)")


def _hook(event, args):
    if event == "socket.getaddrinfo":
        host = args[0].decode() if isinstance(args[0], bytes) else args[0]
        if host not in _LOCAL:
            _record(f"getaddrinfo {host}:{args[1]}")
    elif event == "socket.connect":
        sock, address = args
        if sock.family == socket.AF_UNIX:
            return
        host = address[0] if isinstance(address, tuple) else address
        if host not in _LOCAL:
            _record(f"connect {address!r}")


sys.addaudithook(_hook)
