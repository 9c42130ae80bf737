"""No command: the TUI, on every service of the wiring (it serves the sandbox if nobody does)."""

from __future__ import annotations

import argparse

from console.cli.common import say, settings_for


def cmd_tui(args: argparse.Namespace) -> int:
    from console.services.lock_watch import LockWatch
    from console.services.session import Services
    from console.ui.app import TpuConsoleApp
    from console.wiring import Wiring, open_fleet_source, open_history

    settings = settings_for(args)
    history = open_history(settings, fresh=args.fresh_history, say=say)  # said before the screen
    source = open_fleet_source(settings, serve_here=True)
    try:
        wiring = Wiring.build(source, history=history)
        # The screens' typed bundle (every service required) over the wiring's own wiring.
        screens = Services(
            fleet=wiring.fleet,
            jobs=wiring.jobs,
            prober=wiring.prober,
            lifecycle=wiring.lifecycle,
            locks=LockWatch(wiring.prober),
            launcher=wiring.launcher,
            chips=wiring.chips,
            stacks=wiring.stacks,
            stuck_after_s=settings.stuck_after_s,
        )
        app = TpuConsoleApp(
            screens,
            mode=source.label,
            refresh_s=args.refresh or settings.refresh_s,
            others_using=source.stranded_by_quit,
            managed=wiring.managed,
        )
        app.run()
        wiring.history.close()
    finally:
        source.close()
    return 0
