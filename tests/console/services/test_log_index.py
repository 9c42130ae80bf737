"""The merged log index: complete lines only, arrival order, views by worker and filter."""

from __future__ import annotations

from pathlib import Path

from console.services.log_index import CACHE_LINES, LogIndex


def test_lines_merge_in_arrival_order_and_partial_lines_wait(tmp_path: Path) -> None:
    w0, w1 = tmp_path / "w0.log", tmp_path / "w1.log"
    index = LogIndex({0: w0, 1: w1})
    w0.write_bytes(b"a1\na2\npart")
    assert index.scan() == 2
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
