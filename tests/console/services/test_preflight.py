"""Preflight on the sandbox's nodes: each of the seeds' failures refused or warned in advance."""

from __future__ import annotations

import pytest

from console.adapters.tpu_api import TpuApi
from console.models import ProbeReport, WorkerProbe
from console.services.preflight import preflight
from console.services.templates import GRPO, MULTI_ENGINE


async def _node(api: TpuApi, name: str, zone: str = "us-central2-b"):
    return await api.get_node(zone, name)


def levels(checks) -> list[tuple[str, str]]:
    return [(c.level, c.message) for c in checks]


async def test_a_preempted_node_is_refused_with_the_reason(api: TpuApi) -> None:
    checks = preflight(MULTI_ENGINE, {}, await _node(api, "demo-spot-v4-8"), "all")
    assert [c.level for c in checks] == ["refuse"]
    assert "PREEMPTED" in checks[0].message and "delete it and create again" in checks[0].remedy


async def test_sglang_on_tpu_v3_is_refused(api: TpuApi) -> None:
    checks = preflight(
        MULTI_ENGINE, MULTI_ENGINE.values("tiny-llama"), await _node(api, "demo-v3-8"), "all"
    )
    assert any(c.level == "refuse" and "TPU version must be 4" in c.message for c in checks)


async def test_multi_host_grpo_with_sglang_rollout_is_refused_with_the_two_ways_that_work(
    api: TpuApi,
) -> None:
    node = await _node(api, "demo-v4-16")
    checks = preflight(GRPO, GRPO.values("single-host-sglang"), node, "all")
    assert [c.level for c in checks] == ["refuse"]
    assert "continuator" in checks[0].message
    assert "rollout_engine=vanilla" in checks[0].remedy
    assert "separate single-host servers" in checks[0].remedy
    # No template value makes in-process sglang-jax span the hosts: what the runner refuses.
    for name in GRPO.values(""):
        assert "nnodes" not in name and "node_rank" not in name
    assert not [p.name for p in GRPO.all_params if "nnodes" in p.name or "dist_init" in p.name]
    assert preflight(GRPO, GRPO.values("multi-host-vanilla"), node, "all") == []
    assert preflight(GRPO, GRPO.values("toy"), node, "all") == []  # the toy runs vanilla
    toy_default = GRPO.values("", {"model": "toy"})  # engine left to the runner: vanilla
    assert preflight(GRPO, toy_default, node, "all") == []
    partial = preflight(GRPO, GRPO.values("multi-host-vanilla"), node, "0")
    assert [c.level for c in partial] == ["refuse"]
    single = await _node(api, "demo-v4-8")
    assert preflight(GRPO, GRPO.values("single-host-sglang"), single, "all") == []


async def test_grpo_rollout_devices_and_multi_host_checkpoints_are_checked(api: TpuApi) -> None:
    v416 = await _node(api, "demo-v4-16")
    too_many = GRPO.values("multi-host-vanilla", {"rollout_devices": "16"})
    assert [(c.level, c.message) for c in preflight(GRPO, too_many, v416, "all")] == [
        ("refuse", "rollout_devices 16 on demo-v4-16, which has 8 chips.")
    ]
    local = GRPO.values("multi-host-vanilla", {"checkpoint_dir": "/tmp/ckpt"})
    assert [c.level for c in preflight(GRPO, local, v416, "all")] == ["warn"]
    shared = GRPO.values("multi-host-vanilla", {"checkpoint_dir": "gs://bucket/grpo"})
    assert preflight(GRPO, shared, v416, "all") == []
    v3 = await _node(api, "demo-v3-8")
    vanilla_v3 = preflight(GRPO, GRPO.values("", {"rollout_engine": "vanilla"}), v3, "all")
    assert not [c for c in vanilla_v3 if "TPU version" in c.message]  # no sgl-jax, no v4 need
    sglang_v3 = preflight(GRPO, GRPO.values("single-host-sglang"), v3, "all")
    assert any("TPU version must be 4" in c.message for c in sglang_v3)


async def test_multi_engine_needs_a_single_host_and_enough_chips(api: TpuApi) -> None:
    v416 = preflight(
        MULTI_ENGINE, MULTI_ENGINE.values("tiny-llama"), await _node(api, "demo-v4-16"), "0"
    )
    assert any(c.level == "refuse" and "single-host" in c.message for c in v416)
    too_many = preflight(
        MULTI_ENGINE,
        MULTI_ENGINE.values("tiny-llama", {"num_engines": "8"}),
        await _node(api, "demo-v4-8"),
        "all",
    )
    assert any(
        c.level == "refuse" and "8 engines on a host with 4 chips" in c.message for c in too_many
    )
    v5e = await api.get_node("europe-west4-a", "demo-v5e-8")
    assert (
        preflight(MULTI_ENGINE, MULTI_ENGINE.values("tiny-llama", {"num_engines": "8"}), v5e, "all")
        == []
    )


@pytest.mark.parametrize(
    ("overrides", "warned"),
    [
        ({}, True),  # the runner's default concurrency is 4
        ({"concurrency": "4", "warmup_sequential": "true"}, False),
        ({"concurrency": "1"}, False),
    ],
)
async def test_concurrency_without_warmup_warns(api: TpuApi, overrides, warned: bool) -> None:
    checks = preflight(
        MULTI_ENGINE,
        MULTI_ENGINE.values("qwen3-4b", overrides),
        await _node(api, "demo-v4-8"),
        "all",
    )
    assert any("warm-up" in c.message for c in checks) is warned
    assert all(c.level != "refuse" for c in checks)


async def test_stale_state_on_the_workers_offers_the_cleanup(api: TpuApi) -> None:
    stale = ProbeReport.from_json(
        0,
        {
            "lockfile": {"path": "/tmp/libtpu_lockfile", "exists": True, "held": False},
            "verdicts": {"stale_lock": True},
        },
    )
    checks = preflight(
        MULTI_ENGINE,
        MULTI_ENGINE.values("tiny-llama"),
        await _node(api, "demo-v4-8"),
        "all",
        [WorkerProbe(0, stale)],
    )
    assert [c.level for c in checks] == ["offer"]
    assert "STALE LOCK" in checks[0].message and "TPU is already in use" in checks[0].message
