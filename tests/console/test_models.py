"""Pure values: worker selections as gcloud's --worker takes them, accelerator shapes, ages."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from console.models import (
    WorkerSelectionError,
    accelerator_shape,
    format_age,
    parse_worker_selection,
)


@pytest.mark.parametrize(
    ("text", "count", "expected"),
    [
        ("all", 4, (0, 1, 2, 3)),
        ("", 2, (0, 1)),
        ("0", 4, (0,)),
        ("1,3", 4, (1, 3)),
        ("0-2", 4, (0, 1, 2)),
        ("2, 0-1", 4, (0, 1, 2)),
    ],
)
def test_worker_selection_accepts_gcloud_forms(text: str, count: int, expected: tuple) -> None:
    assert parse_worker_selection(text, count) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("4", "does not exist"),
        ("x", "Bad worker selection"),
        ("3-1", "Bad worker selection"),
        ("0-", "Bad worker selection"),
        ("-1", "Bad worker selection"),
        ("2-999999999", "Workers 4-999999999 do not exist: the node has 4 workers"),
    ],
)
def test_worker_selection_rejects_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(WorkerSelectionError, match=message):
        parse_worker_selection(text, 4)


@given(st.integers(1, 64), st.data())
def test_any_chosen_worker_is_within_the_node(count: int, data: st.DataObject) -> None:
    picks = data.draw(st.lists(st.integers(0, count - 1), min_size=1))
    chosen = parse_worker_selection(",".join(map(str, picks)), count)
    assert chosen == tuple(sorted(set(picks)))


@pytest.mark.parametrize(
    ("name", "version", "chips", "hosts", "kind"),
    [
        ("v4-8", "v4", 4, 1, "accel"),
        ("v4-16", "v4", 8, 2, "accel"),
        ("v3-8", "v3", 4, 1, "accel"),
        ("v5litepod-8", "v5e", 8, 1, "vfio"),
        ("v5litepod-16", "v5e", 16, 4, "vfio"),
        ("v5p-8", "v5p", 4, 1, "vfio"),
        ("v6e-8", "v6e", 8, 1, "vfio"),
    ],
)
def test_accelerator_shapes(name: str, version: str, chips: int, hosts: int, kind: str) -> None:
    shape = accelerator_shape(name)
    assert (shape.version, shape.chips, shape.hosts, shape.device_kind) == (
        version,
        chips,
        hosts,
        kind,
    )


def test_ages_read_like_k9s() -> None:
    assert [format_age(s) for s in (None, 5, 65, 3600, 3660, 90000, 86400 * 3)] == [
        "-",
        "5s",
        "1m5s",
        "1h",
        "1h1m",
        "1d1h",
        "3d",
    ]


def test_a_diagnosis_keeps_its_documented_json_shape_and_reads_older_rows() -> None:
    from console.models import Diagnosis

    d = Diagnosis("hbm_oom", "Out of HBM", "RuntimeError: …", "too big", "smaller", 1)
    assert d.as_dict() == {
        "key": "hbm_oom", "title": "Out of HBM", "evidence": "RuntimeError: …",
        "cause": "too big", "remedy": "smaller", "worker": 1,
    }  # fmt: skip
    assert Diagnosis.from_dict(d.as_dict()) == d
    # A row written before a field existed (or with one since dropped) still reads.
    assert Diagnosis.from_dict({"key": "silent", "title": "Silent", "extra": 1}) == Diagnosis(
        "silent", "Silent", "", "", "", None
    )


def test_statuses_are_their_plain_values_for_the_history_and_json() -> None:
    import json

    from console.models import JobStatus, StopResult, WorkerStop

    assert JobStatus("lost") == "lost" and json.dumps(JobStatus.LOST) == '"lost"'
    assert JobStatus.RUNNING.open and not JobStatus.KILLED.open
    said = WorkerStop.parse("stopped: 1 process it left running in its session")
    assert said == WorkerStop(StopResult.STOPPED, "1 process it left running in its session")
    assert str(said) == "stopped: 1 process it left running in its session"
    assert WorkerStop.parse("gone").result == StopResult.GONE
    assert WorkerStop.parse("Permission denied").result == StopResult.NOT_STOPPED
