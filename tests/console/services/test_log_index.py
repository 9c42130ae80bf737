"""The merged log index: complete lines only, arrival order, views by worker and filter."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from console.services.lines import VISIBLE_BYTES
from console.services.log_index import CACHE_LINES, LogIndex, Query, QueryCancelled


def test_lines_merge_in_arrival_order_and_an_open_line_shows_as_it_grows(tmp_path: Path) -> None:
    w0, w1 = tmp_path / "w0.log", tmp_path / "w1.log"
    index = LogIndex({0: w0, 1: w1})
    w0.write_bytes(b"a1\na2\npart")
    assert index.scan() == 3  # two lines, and the one being written
    assert index.visible_line(2) == (0, "part")
    w1.write_bytes(b"b1\n")
    with open(w0, "ab") as fh:
        fh.write(b"ial\n")
    assert index.scan() == 2
    rows = [index.visible_line(r) for r in range(len(index.visible))]
    assert rows == [(0, "a1"), (0, "a2"), (0, "partial"), (1, "b1")]


def test_views_by_worker_and_filter_and_search_wraps(tmp_path: Path) -> None:
    paths = {0: tmp_path / "w0.log", 1: tmp_path / "w1.log"}
    paths[0].write_text("loss 1\nerror here\nloss 2\n")
    paths[1].write_text("loss 3\nERROR there\n")
    index = LogIndex(paths)
    index.scan()
    index.set_view(workers=[1])
    assert [index.visible_line(r)[1] for r in range(len(index.visible))] == [
        "loss 3",
        "ERROR there",
    ]
    index.set_view(workers=[0, 1], filter_text="error")
    assert [index.visible_line(r) for r in range(len(index.visible))] == [
        (0, "error here"),
        (1, "ERROR there"),
    ]
    index.set_view(filter_text="")
    assert index.find("error", 4) == 1  # wraps past the end
    assert index.find("error", 1, forward=False) == 4
    assert index.find("nowhere", 0) is None
    with open(paths[1], "a") as fh:
        fh.write("error again\n")
    index.set_view(filter_text="error")
    index.scan()  # new lines join the filtered view as they arrive
    assert index.visible_line(len(index.visible) - 1) == (1, "error again")


def test_memory_holds_offsets_not_text(tmp_path: Path) -> None:
    path = tmp_path / "w0.log"
    path.write_text("".join(f"line {i} " + "x" * 200 + "\n" for i in range(20_000)))
    index = LogIndex({0: path})
    assert 0 < index.scan(budget_bytes=1 << 20) < 20_000  # one call does a bounded share
    assert index.behind
    while index.scan(budget_bytes=1 << 20):
        pass
    assert len(index) == 20_000 and not index.behind
    for row in range(len(index.visible)):
        index.visible_line(row)
    assert len(index._cache) <= CACHE_LINES
    assert index.visible_line(12_345)[1].startswith("line 12345 ")


def test_a_line_longer_than_a_read_does_not_pin_the_index(tmp_path: Path) -> None:
    """A tqdm bar redrawn with \\r for a long time is one line of hundreds of kilobytes."""
    log = tmp_path / "w0.log"
    bar = "\r".join(f"{i}% |{'#' * (i // 2)}|" for i in range(101)) * 40
    log.write_text(bar + "\nafter\n")
    index = LogIndex({0: log})
    while index.scan(budget_bytes=1 << 16):
        pass
    assert len(index) == 2 and index.text(1) == "after" and not index.lagging


def test_a_progress_bar_is_one_row_at_its_latest_state_while_it_runs(tmp_path: Path) -> None:
    log = tmp_path / "w0.log"
    log.write_bytes(b"epoch 1\n")
    index = LogIndex({0: log})
    index.scan()
    for i in range(0, 101, 5):
        with open(log, "ab") as fh:
            fh.write(f"\r{i:3d}%|{'#' * (i // 10):<10}| {i * 1000}/100000".encode() * 20)
        index.scan()
        assert len(index) == 2  # "N lines" counts the bar while it runs
        assert index.visible_line(1)[1].endswith(f"{i * 1000}/100000")
    with open(log, "ab") as fh:
        fh.write(b"\nepoch 2\n")
    index.scan()
    assert [index.visible_line(r)[1][-13:] for r in range(3)][1:] == ["100000/100000", "epoch 2"]


def test_a_line_far_longer_than_the_screen_is_read_once_and_shown_in_part(tmp_path: Path) -> None:
    log = tmp_path / "w0.log"
    index = LogIndex({0: log})
    with open(log, "wb") as fh:
        fh.write(b"x" * (3 << 20))
    read = 0
    while index.lagging or read == 0:
        chunks = index.read_new(1 << 20)
        read += sum(len(c.data) for c in chunks)
        index.apply(chunks)
    assert read == 3 << 20  # every byte once: the open line is not read again per scan
    with open(log, "ab") as fh:
        fh.write(b"y" * 10 + b"\nnext\n")
    while index.scan():
        pass
    assert len(index) == 2
    text = index.text(0)
    assert text.startswith("x" * 100) and text.endswith(
        f" … [{(3 << 20) + 10 - VISIBLE_BYTES:,} more bytes]"
    )
    assert len(text) < VISIBLE_BYTES + 100 and index.text(1) == "next"


def test_search_and_filter_run_on_a_thread_report_progress_and_stop(tmp_path: Path) -> None:
    log = tmp_path / "w0.log"
    log.write_bytes(b"".join(b"line %d\n" % i for i in range(50_000)) + b"needle\n")
    index = LogIndex({0: log})
    while index.scan():
        pass
    query = Query("search", "needle")
    assert index.find_row("needle", 0, True, query) == 50_000
    assert query.total == log.stat().st_size and 0.99 < query.fraction <= 1.0
    assert index.find_row("LINE 4999", 50_000, False, Query("search", "LINE 4999")) == 49_999
    visible, upto = index.filtered(frozenset({0}), "NEEDLE", Query("filter", "NEEDLE"))
    assert list(visible) == [50_000] and upto == 50_001
    stopped = Query("search", "absent")
    stopped.stop.set()
    with pytest.raises(QueryCancelled):
        index.find_row("absent", 0, True, stopped)
    with pytest.raises(QueryCancelled):
        index.filtered(frozenset({0}), "absent", stopped)
    done = threading.Event()
    threading.Thread(
        target=lambda: (index.filtered(frozenset({0}), "7", Query("f", "7")), done.set())
    ).start()
    with open(log, "ab") as fh:  # the index grows meanwhile: the thread reads what it began with
        fh.write(b"more 7\n")
    index.scan()
    assert done.wait(30)


def test_many_workers_interleaved_keep_arrival_order_views_and_search(tmp_path: Path) -> None:
    paths = {w: tmp_path / f"w{w}.log" for w in range(5)}
    index = LogIndex(paths)
    for round_ in range(40):
        for w in paths:
            if (round_ + w) % 3 == 0:
                continue  # some workers are quiet in some rounds: runs of varying workers
            lines = [f"r{round_} w{w} n{i}" + (" boom" if i == w else "") for i in range(w + 1)]
            with open(paths[w], "a") as fh:
                fh.write("".join(line + "\n" for line in lines))
        while index.scan(budget_bytes=64):
            pass
    rows = [index.visible_line(r) for r in range(len(index.visible))]
    by_worker = {w: [t for v, t in rows if v == w] for w in paths}
    for w, path in paths.items():  # each worker's lines in its own order, none lost or twice
        assert by_worker[w] == path.read_text().splitlines()
    assert len(index) == sum(len(p.read_text().splitlines()) for p in paths.values())
    index.set_view(workers=[2, 4])
    assert [index.visible_line(r) for r in range(len(index.visible))] == [
        r for r in rows if r[0] in (2, 4)
    ]
    index.set_view(workers=list(paths), filter_text="BOOM")
    assert [index.visible_line(r) for r in range(len(index.visible))] == [
        r for r in rows if "boom" in r[1]
    ]
    index.set_view(filter_text="")
    hits = [r for r, (_, text) in enumerate(rows) if "w3 n3 boom" in text]
    assert index.find("w3 n3 boom", hits[0]) == hits[1]
    assert index.find("w3 n3 boom", hits[0], forward=False) == hits[-1]  # wraps


def test_a_steady_flood_costs_about_eight_bytes_a_line(tmp_path: Path) -> None:
    paths = {w: tmp_path / f"w{w}.log" for w in range(16)}
    for w, path in paths.items():
        path.write_bytes(b"".join(b"w%d line %d\n" % (w, i) for i in range(5000)))
    index = LogIndex(paths)
    while index.scan():
        pass
    assert len(index) == 16 * 5000
    assert index.memory_bytes() / len(index) < 9  # an offset a line; the order as runs


def test_the_matchers_get_a_line_whole_when_it_was_written_in_pieces(tmp_path: Path) -> None:
    path = tmp_path / "w0.log"
    index = LogIndex({0: path})
    told: list[bytes] = []
    index.on_lines = lambda worker, data: told.append(data)
    index.select_lines = lambda data: b"".join(
        line + b"\n" for line in data.split(b"\n") if b"DONE" in line
    )
    for piece in (b"noise\nDO", b"NE: step", b"s=10\nmore noise\n"):
        with open(path, "ab") as fh:
            fh.write(piece)
        index.scan()
    assert b"".join(told) == b"DONE: steps=10\n"  # the anchor spanned two reads
    assert [index.visible_line(r)[1] for r in range(len(index.visible))] == [
        "noise",
        "DONE: steps=10",
        "more noise",
    ]
