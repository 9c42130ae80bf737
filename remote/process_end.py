"""How a runner's process ends: always, and right after its last word, whatever main() did.

sgl-jax, Tunix and JAX leave threads running after their work (engine schedulers, prefetchers);
a process that waited for them lingered after DONE and, worse, after an exception, holding the
TPU with no line saying why. So the runners end themselves with os._exit once main() is done.
"""

import os
import sys
import traceback


def run_and_exit(main):
    """Run main(); print what stopped it (a message, or the traceback); end with its code.

    Every runner goes through here, so every runner dumps its threads' stacks on SIGUSR1
    (remote/stack_dumps.py): the console's stacks view asks for them.
    """
    from remote import stack_dumps

    stack_dumps.enable()
    try:
        code = main()
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            code = 1
        else:
            code = exc.code or 0
    except BaseException:  # the traceback is the job's last word; then the process goes
        traceback.print_exc()
        code = 1
    stack_dumps.disable()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 1)
