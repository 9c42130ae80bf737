"""`diagnose LOGFILE`: known failures and results in a saved log, no fleet needed."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from console.cli.common import fail
from console.present.jobs import finding_lines, findings_json
from console.services.diagnosis import diagnose_text
from console.services.lines import split_lines
from console.services.metrics import JobMetrics

_PREFIX = re.compile(r"\[w(\d+)\] ")


def cmd_diagnose(args: argparse.Namespace) -> int:
    """Exit 0 when the log shows no known failure, 1 when it does, 2 when it cannot be read."""
    try:
        text = Path(args.logfile).read_text(errors="replace")
    except OSError as exc:
        return fail(f"cannot read {args.logfile}: {exc.strerror}")
    found = diagnose_text(text)
    metrics = JobMetrics()
    for line in split_lines(text):
        m = _PREFIX.match(line)
        metrics.feed(int(m.group(1)) if m else 0, line[m.end() :] if m else line)
    summary = metrics.summary()
    if args.json:
        print(json.dumps(findings_json(found, summary)))
        return 1 if found else 0
    for d in found:
        print("\n".join(finding_lines(d)))
    print(f"results: {summary}" if summary else "results: none found")
    if not found:
        print("no known failure found")
    return 1 if found else 0
