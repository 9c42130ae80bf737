"""A job's logs, every worker merged with a coloured `wN` prefix, followed live.

The screen follows the job in a Textual worker; the LogStreams write the local copies and a
20 Hz tick indexes whatever arrived, so a fast producer costs one redraw per tick, not per line.
What the lines mean (findings, hangs, silence, the record) is the JobMonitor's business.
"""

from __future__ import annotations

import asyncio
from array import array
from collections.abc import Callable
from datetime import datetime
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Footer, Header, Input, Static

from console.models import ChipMetrics, FleetError, Job, Node, NodeGone
from console.services import log_bucket
from console.services.chip_metrics import MetricsWatch
from console.services.diagnosis import _ANCHORS as DIAGNOSIS_ANCHORS
from console.services.diagnosis import Diagnoser
from console.services.job_monitor import JobMonitor
from console.services.lines import lines_holding
from console.services.log_index import LogIndex, Query, QueryCancelled
from console.services.metrics import _RESULT_ANCHORS as RESULT_ANCHORS
from console.services.metrics import JobMetrics
from console.services.terminal_text import plain_text
from console.ui.base_screens import ConsoleScreen
from console.ui.plain import Piece, styled
from console.ui.widgets.duty_sparklines import DutySparklines, duty_lines
from console.ui.widgets.findings_panel import FindingsPanel
from console.ui.widgets.log_view import LogView
from console.ui.widgets.status_line import StatusLine

TICK_S = 0.05  # how often to look for new lines when caught up
REDRAW_S = 0.1  # how often the view redraws while lines pour in
SLICE_BYTES = 4 << 20  # one indexing slice: cut on the index thread, a few ms on the loop
# What the monitor's bulk matchers (diagnosis, results) look for: each matches only lines that
# hold one of its anchors, so the index hands them only those, picked out on its thread.
MATCHER_ANCHORS = DIAGNOSIS_ANCHORS + RESULT_ANCHORS


def matched_lines(data: bytes) -> bytes:
    return lines_holding(MATCHER_ANCHORS, data)


LISTED_WORKERS = 8  # beyond that, the status counts workers by state (one row for 256)
NAMED_IN_STATE = 3  # a state this few workers are in names them: the odd one out shows


def worker_states(ended: dict[int, str]) -> str:
    """How each worker's job stands, in one status row however many workers there are."""
    if len(ended) <= LISTED_WORKERS:
        return " ".join(f"w{w}:{state or 'running'}" for w, state in sorted(ended.items()))
    groups: dict[str, list[int]] = {}
    for worker, state in sorted(ended.items()):
        groups.setdefault(state or "running", []).append(worker)
    parts = []
    for state, workers in sorted(groups.items(), key=lambda g: (-len(g[1]), g[0])):
        if len(workers) <= NAMED_IN_STATE:
            parts.append(" ".join(f"w{w}:{state}" for w in workers))
        else:
            parts.append(f"{len(workers)} {state}")
    return " ".join(parts)


class LogScreen(ConsoleScreen[None]):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("f", "toggle_follow", "Follow"),
        Binding("slash", "search", "Search"),
        Binding("n", "next_match", "Next", show=False),
        Binding("N", "previous_match", "Previous", show=False),
        Binding("ampersand", "filter", "Filter"),
        Binding("a", "show_worker('all')", "All workers"),
        *[
            Binding(str(k), f"show_worker('{k - 1}')", f"Worker {k - 1}", show=False)
            for k in range(1, 10)
        ],
        Binding("s", "save", "Save"),
        Binding("t", "stacks", "Stacks"),
        Binding("question_mark", "app.help", "Help"),
    ]

    def __init__(self, job: Job) -> None:
        super().__init__()
        self.job = job
        self.index: LogIndex
        # What the record already knows; a worker that never started has nothing to wait for.
        self.ended: dict[int, str] = {
            w.worker: (f"rc={w.rc}" if w.rc is not None else "" if w.pid else "not started")
            for w in job.workers
        }
        self.input_mode = ""  # "search" or "filter" while the input is open
        self.monitor: JobMonitor
        self._findings_changed = False
        self._changed = False
        self._view_query: Query | None = None  # a filter or worker view being made
        self._search_query: Query | None = None
        self._search_after_view: tuple[int, bool] | None = None
        self.view_filter = ""  # the view asked for, shown once made
        self.view_workers: frozenset[int] = frozenset(self.ended)
        self._chips_watch: MetricsWatch | None = None
        self.chip_metrics: ChipMetrics | None = None

    def compose(self) -> ComposeResult:
        paths = {
            w.worker: self.services.jobs.log_path(self.job.job_id, w.worker)
            for w in self.job.workers
        }
        self.monitor = self.services.monitor(self.job.job_id, self.job)
        self.index = LogIndex(paths)
        self.index.on_lines = self._scan_lines
        self.index.select_lines = matched_lines
        yield Header()
        yield Static("", id="log-banner", classes="banner", markup=False)
        yield StatusLine(id="log-status")
        yield DutySparklines(id="log-duty")
        yield FindingsPanel(id="log-diagnosis")
        yield LogView(self.index, id="log")
        yield Input(id="log-input", classes="bottom-input")
        yield Footer()

    @property
    def diagnoser(self) -> Diagnoser:
        return self.monitor.diagnoser

    @property
    def metrics(self) -> JobMetrics:
        return self.monitor.metrics

    @property
    def view(self) -> LogView:
        return self.query_one("#log", LogView)

    def on_mount(self) -> None:
        self.sub_title = f"{self.app.mode} · job {self.job.job_id} on {self.job.node}"
        self.index.scan()
        self.view.refresh_rows()
        self.set_interval(REDRAW_S, self._redraw)
        self._indexer = asyncio.get_running_loop().create_task(self._index_forever())
        self._follow_job()
        self.view.focus()
        self.watch(self.view, "follow", lambda _: self._update_status(), init=False)
        self._update_status()

    def on_unmount(self) -> None:
        self._stop_queries()
        self._indexer.cancel()
        self.index.close()
        if self._chips_watch is not None:
            self.app.run_worker(self._chips_watch.close(), group="chip-watch")

    # ----- the chips: a duty sparkline per worker, and what "stuck?" weighs ----------------------
    def _watch_chips(self, node: Node) -> None:
        if self._chips_watch is None and self.job.open and self.is_attached:
            self._chips_watch = self.services.chips.watch(node, self._chips_polled)

    def _chips_polled(self, metrics: ChipMetrics) -> None:
        self.chip_metrics = metrics
        self.monitor.saw_metrics(metrics)
        if not self.query("#log-duty"):
            return
        history = {
            w.worker: [d for _, d in self.services.chips.duty_history(metrics.node, w.worker)]
            for w in metrics.workers
        }
        sparklines = self.query_one("#log-duty", DutySparklines)
        sparklines.text = duty_lines(metrics, history)
        sparklines.add_class("shown")

    def action_stacks(self) -> None:
        """Every worker's stacks of this job, side by side (`tpuconsole stacks JOB`)."""
        from console.ui.stacks_screen import StacksScreen

        if not self.job.open:
            self.notify(
                f"Job {self.job.job_id} is not running ({self.job.status}): no stacks to take.",
                severity="warning",
            )
            return
        self.app.push_screen(StacksScreen(self.job))

    async def _index_forever(self) -> None:
        """Index what the streams wrote, in short slices, yielding between them.

        However far behind (a fast producer, or catching up on a big log), no slice holds
        the event loop for more than a few milliseconds.
        """
        while True:
            if await self.index.scan_off_loop(budget_bytes=SLICE_BYTES):
                self._changed = True
                self.monitor.output_seen()  # a bar that grows is output too
            await asyncio.sleep(0 if self.index.lagging else TICK_S)

    def _scan_lines(self, worker: int, data: bytes) -> None:
        """Newly indexed lines, to the monitor's bulk matchers (failures, results)."""
        if self.monitor.feed(worker, data):
            self._findings_changed = True

    def _sync_due(self) -> None:
        """The record (status, findings made elsewhere) every few seconds, read on a thread."""
        if self.monitor.sync_due():
            self.run_worker(self._sync_record(), group="job-record")

    async def _sync_record(self) -> None:
        record, new_findings = await self.monitor.sync()
        if new_findings and self.is_attached:
            self._show_findings()
        if record is not None and record.status != self.job.status:
            self.job = record
            self._changed = True

    def _show_findings(self) -> None:
        self._findings_changed = False
        self.query_one(FindingsPanel).show(self.monitor.found, self.monitor.metrics)

    def _redraw(self) -> None:
        if self.monitor.check(self.job.open, self.ended):
            self._findings_changed = True
        self._sync_due()
        if self._findings_changed:
            self._show_findings()
        if self._changed:
            self._changed = False
            self.view.refresh_rows()
            self._update_status()
        elif self.running_query is not None:
            self._update_status()  # its progress

    @work(exclusive=True, group="job-logs")
    async def _follow_job(self) -> None:
        jobs = self.services.jobs
        try:
            node = await self.services.fleet.get_node(self.job.zone, self.job.node)
            if jobs.log_bucket and (gone := log_bucket.vm_gone(self.job, node)):
                raise NodeGone(gone, node.state)  # preempted, or a new VM of the same name
            self._watch_chips(node)
            await jobs.watch(self.job, node, on_end=self._worker_ended)
        except FleetError as exc:
            banner = self.query_one("#log-banner", Static)
            if jobs.log_bucket and (isinstance(exc, NodeGone) or exc.code == "NOT_FOUND"):
                why = (
                    exc.reason if isinstance(exc, NodeGone) else f"{self.job.node} no longer exists"
                )
                read = await log_bucket.read_back(jobs, self.job, why)
                banner.update(styled((read.line(why), "b")))
            else:
                banner.update(styled((exc.reason, "b"), f" {exc.remedy} Showing the local copy."))
            banner.add_class("shown")
            # Nothing more will come (the job ended, or its VM with it): a last line without
            # newline is one.
            if not self.job.open or isinstance(exc, NodeGone):
                for w in self.job.workers:
                    self.index.mark_ended(w.worker)
        self._changed = True

    def _worker_ended(self, worker: int, rc: int | None) -> None:
        self.ended[worker] = "ended, no rc" if rc is None else f"rc={rc}"
        self.index.mark_ended(worker)
        self._changed = True  # the indexer catches up in slices; no long catch-up here
        if self._chips_watch is not None and all(self.ended.values()):
            # The job's chips are free: the sparklines keep their last second. Polling on
            # would ask every worker each second for a libtpu that no longer serves (256
            # refused tunnels a second on a pod slice, for as long as the view stays open).
            watch, self._chips_watch = self._chips_watch, None
            self.app.run_worker(watch.close(), group="chip-watch")

    def _update_status(self) -> None:
        shown = (
            "all"
            if self.index.shown_workers == frozenset(self.ended)
            else ",".join(f"w{w}" for w in sorted(self.index.shown_workers))
        )
        states = worker_states(self.ended)
        follow = ("FOLLOW", "b green") if self.view.follow else ("PAUSED", "b yellow")
        job_state = {"killed": ("KILLED", "b red"), "lost": ("LOST", "b red")}.get(self.job.status)
        parts: list[Piece] = [
            *([job_state] if job_state else []),
            follow,
            f"{len(self.index.visible)}/{len(self.index)} lines",
            f"workers: {shown}",
            states,
        ]
        if self.index.filter_text:
            parts.append(f"filter: {self.index.filter_text!r}")
        if self.view.search_text:
            parts.append(f"search: {self.view.search_text!r}")
        running = self.running_query
        if running is not None:
            doing = "searching" if running.what == "search" else "filtering"
            parts.append(
                (f"{doing} {running.text!r}… {running.fraction:.0%} (esc stops)", "b cyan")
            )
        self.query_one("#log-status", StatusLine).text = styled(*parts, sep=" · ")

    # ----- searches and filters, off the event loop --------------------------------------------
    # Both read every line of a big log, so each runs on a thread (LogIndex.filtered and
    # find_row) while keys go on working. A new view (filter, workers) stops the view being
    # made and any search (its rows would change); a search asked for meanwhile waits for the
    # view. A new search stops the one running; esc stops both.

    @property
    def running_query(self) -> Query | None:
        return self._view_query or self._search_query

    def _run(self, query: Query, work: Callable[[], Any], done: Callable[[Any], None]) -> None:
        async def run() -> None:
            try:
                result = await asyncio.to_thread(work)
            except QueryCancelled:
                return
            finally:
                self._finished(query)
            if not query.stop.is_set():
                done(result)

        self.run_worker(run(), group="log-query")
        self._update_status()

    def _finished(self, query: Query) -> None:
        if self._view_query is query:
            self._view_query = None
        if self._search_query is query:
            self._search_query = None
        if self.is_attached:  # the screen may be closing
            self._update_status()

    def _stop_queries(self) -> bool:
        stopped = False
        for query in (self._view_query, self._search_query):
            if query is not None:
                query.stop.set()
                stopped = True
        self._view_query = self._search_query = None
        self._search_after_view = None
        return stopped

    def _set_view(self) -> None:
        """Make the view the user asked for (`view_workers`, `view_filter`) and show it."""
        self._stop_queries()
        workers, text = self.view_workers, self.view_filter
        query = self._view_query = Query("filter", text)

        def adopt(result: tuple[array, int]) -> None:
            visible, upto = result
            self.index.install_view(workers, text, visible, upto)
            self.view.current_row = None
            self.view.refresh_rows()
            self._update_status()
            if self._search_after_view is not None:
                start, forward = self._search_after_view
                self._search_after_view = None
                self._search(start, forward)

        self._run(query, lambda: self.index.filtered(workers, text, query), adopt)

    def _search(self, start: int, forward: bool) -> None:
        needle = self.view.search_text
        if not needle:
            return
        if self._view_query is not None:
            self._search_after_view = (start, forward)
            return
        if self._search_query is not None:
            self._search_query.stop.set()
        query = self._search_query = Query("search", needle)
        self._run(query, lambda: self.index.find_row(needle, start, forward, query), self._jump)

    # ----- keys --------------------------------------------------------------------------------
    def action_back(self) -> None:
        box = self.query_one("#log-input", Input)
        if box.has_class("shown"):
            self._close_input()
            return
        if self._stop_queries():
            self._update_status()
            return
        self.app.pop_screen()

    def action_toggle_follow(self) -> None:
        self.view.follow = not self.view.follow
        self.view.current_row = None
        self._update_status()

    def action_show_worker(self, which: str) -> None:
        workers = set(self.ended)
        if which != "all":
            if int(which) not in workers:
                self.notify(f"This job has no worker {which}.", severity="warning")
                return
            workers = {int(which)}
        self.view_workers = frozenset(workers)
        self._set_view()

    def _open_input(self, mode: str, placeholder: str, value: str) -> None:
        self.input_mode = mode
        box = self.query_one("#log-input", Input)
        box.placeholder = placeholder
        box.value = value
        box.add_class("shown")
        box.focus()

    def _close_input(self) -> None:
        self.query_one("#log-input", Input).remove_class("shown")
        self.input_mode = ""
        self.view.focus()

    def action_search(self) -> None:
        self._open_input(
            "search",
            "search (enter: first match after the view; n/N: next/prev)",
            self.view.search_text,
        )

    def action_filter(self) -> None:
        self._open_input(
            "filter", "keep only lines containing… (empty: all lines)", self.view_filter
        )

    @on(Input.Submitted, "#log-input")
    def _input_done(self, event: Input.Submitted) -> None:
        mode = self.input_mode
        self._close_input()
        if mode == "filter":
            self.view_filter = event.value
            self._set_view()
        elif mode == "search":
            self.view.search_text = event.value
            self._search(int(self.view.scroll_offset.y) - 1, forward=True)
        self._update_status()

    def _jump(self, row: int | None) -> None:
        if row is None:
            self.notify(f"No line contains {self.view.search_text!r}.", severity="warning")
            return
        self.view.show_row(row)
        self._update_status()

    def action_next_match(self) -> None:
        start = self.view.current_row if self.view.current_row is not None else -1
        self._search(start, forward=True)

    def action_previous_match(self) -> None:
        start = self.view.current_row if self.view.current_row is not None else 0
        self._search(start, forward=False)

    def action_save(self) -> None:
        folder = self.services.jobs.home / "saved"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.job.job_id}-{datetime.now():%Y%m%d-%H%M%S}.log"
        with open(path, "w") as fh:
            for row in range(len(self.index.visible)):
                worker, text = self.index.visible_line(row)
                fh.write(f"[w{worker}] {plain_text(text)}\n")  # what is shown, as shown
        self.notify(f"Saved {len(self.index.visible)} lines to {path}")
