"""A test program that hangs on a two-worker slice: w1 waits at a barrier w0 never reaches.

Run as our runners run (through remote.process_end, so SIGUSR1 dumps its stacks into the log),
holding the worker's stand-in chips as a TPU program would. Rank 0 (TPUCONSOLE_PROCESS_ID)
listens on the slice's coordinator address and then, instead of arriving at the barrier, spins
elsewhere (its chips look busy); rank 1 connects and blocks in the barrier until rank 0 arrives,
which it never does (its chips stay idle).
"""

import glob
import os
import socket
import time

from remote.process_end import run_and_exit


def hold_chips(rank):
    """Rank 0 computes on one chip (so its duty cycle shows, undivided), rank 1 holds all."""
    paths = sorted(glob.glob(os.environ["TPUCONSOLE_DEVICES"]))
    return [open(p, "rb") for p in (paths[:1] if rank == 0 else paths)]  # noqa: SIM115


def barrier(host, port):
    """Rank 1: arrive, then wait for rank 0's byte."""
    while True:
        try:
            peer = socket.create_connection((host, port), timeout=1)
        except OSError:
            time.sleep(0.05)
            continue
        if peer.getsockname() != peer.getpeername():
            break
        peer.close()  # TCP connected the socket to itself (its port is an ephemeral one)
    peer.settimeout(None)
    print("w1: at the barrier", flush=True)
    peer.recv(1)


def elsewhere(server):
    """Rank 0: busy with something that never ends, the barrier never reached."""
    peer, _ = server.accept()  # kept open: rank 1 waits on it for ever
    print("w0: preparing the next batch", flush=True)
    total = 0
    while peer:
        total += sum(range(20000))


def main():
    rank = int(os.environ.get("TPUCONSOLE_PROCESS_ID", "0"))
    chips = hold_chips(rank)
    host, port = os.environ["TPUCONSOLE_COORDINATOR"].rsplit(":", 1)
    if rank == 0:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((host, int(port)))
        server.listen(1)
        elsewhere(server)
    else:
        barrier(host, int(port))
    return len(chips)


if __name__ == "__main__":
    run_and_exit(main)
