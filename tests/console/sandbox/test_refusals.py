"""The sandbox refuses what Google refuses, in Google's codes and words; a gone VM's processes go.

Sources: label rules as gcloud checks them (googlecloudsdk/command_lib/util/args/labels_util.py)
and as the TPU API words a refusal (GoogleCloudPlatform/ml-testing-accelerators#461); an unknown
zone is PERMISSION_DENIED "Location Z is not found or access is unauthorized." (SkyPilot's TPU VM
code, sky/provision/gcp/instance_utils.py; dstackai/gpuhunt#98).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from console.adapters.tpu_api import TpuApi
from console.models import FleetError
from console.sandbox.runtime import Sandbox
from console.services.jobs import JobService
from tests.conftest import sshd_up, worker_output

ZONE = "us-central1-a"


@pytest.mark.parametrize(
    ("labels", "said"),
    [
        ({"k": "V"}, 'value "V" contains invalid character \'V\' at index 0 for key "k"'),
        ({"k": "a b"}, 'value "a b" contains invalid character \' \' at index 1 for key "k"'),
        ({"k": "$(id)"}, "value \"$(id)\" contains invalid character '$' at index 0"),
        ({"k": "x" * 64}, f'value "{"x" * 64}" is 64 characters long (at most 63) for key "k"'),
        ({"Team": "rl"}, "key \"Team\" contains invalid character 'T' at index 0"),
        ({"9lives": "x"}, "key \"9lives\" contains invalid character '9' at index 0"),
    ],
)
async def test_labels_outside_googles_rules_are_refused_by_the_api_in_its_words(
    api: TpuApi, labels: dict[str, str], said: str
) -> None:
    with pytest.raises(FleetError) as refused:
        await api.create_node(ZONE, "labelled", "v3-8", "tpu-ubuntu2204-base", labels=labels)
    assert refused.value.code == "INVALID_ARGUMENT"
    assert "resource labels are invalid: " + said in refused.value.reason
    assert "labelled" not in {n.name for n in await api.list_nodes(ZONE)}


async def test_labels_within_the_rules_are_kept_international_ones_too(api: TpuApi) -> None:
    labels = {"team": "rl", "owner_id": "", "stage-2": "x" * 63, "équipe": "données"}
    await api.wait_operation(
        await api.create_node(ZONE, "labelled", "v3-8", "tpu-ubuntu2204-base", labels=labels),
        poll_s=0.05,
    )
    assert (await api.get_node(ZONE, "labelled")).labels == labels


async def test_an_unknown_zone_is_refused_as_google_refuses_it(api: TpuApi) -> None:
    assert "nowhere-9" not in await api.list_zones()
    for call in (
        api.create_node("nowhere-9", "lost", "v4-8", "tpu-ubuntu2204-base"),
        api.list_nodes("nowhere-9"),
        api.get_node("nowhere-9", "lost"),
    ):
        with pytest.raises(FleetError) as refused:
            await call
        assert refused.value.code == "PERMISSION_DENIED"
        assert "Location nowhere-9 is not found or access is unauthorized." in refused.value.reason
    for zone in await api.list_zones():
        try:
            listed = {n.name for n in await api.list_nodes(zone)}
        except FleetError:  # a listed zone this project has no TPU access in
            continue
        assert "lost" not in listed


async def test_a_runtime_version_the_zone_does_not_list_is_refused(api: TpuApi) -> None:
    assert "bogus" not in await api.runtime_versions(ZONE)
    with pytest.raises(FleetError) as refused:
        await api.create_node(ZONE, "versioned", "v3-8", "bogus")
    assert refused.value.code == "INVALID_ARGUMENT"
    assert 'The field "RuntimeVersion" cannot be "bogus"' in refused.value.reason
    assert "versioned" not in {n.name for n in await api.list_nodes(ZONE)}


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def _gone(pids: list[int], limit_s: float = 120.0) -> bool:
    for _ in range(int(limit_s / 0.05)):
        if not any(_alive(p) for p in pids):
            return True
        await asyncio.sleep(0.05)
    return False


@pytest.mark.parametrize("fate", ["preempt", "delete", "stop"])
async def test_a_gone_nodes_job_processes_go_with_it_and_nothing_else_does(
    sandbox: Sandbox, api: TpuApi, jobs: JobService, tmp_path: Path, fate: str
) -> None:
    zone = "us-central1-a"  # europe-west4-a has no spot v5e capacity
    await api.wait_operation(
        # v3: spot v5e has no capacity in this zone (SPOT_STOCKOUTS), spot v3 has.
        await api.create_node(zone, "doomed", "v3-8", "tpu-ubuntu2204-base", spot=True),
        poll_s=0.05,
    )
    node = await api.get_node(zone, "doomed")
    await sshd_up(sandbox, zone, "doomed")  # READY comes before its sshd
    # The job, a child it put in a session of its own, and a bystander with a look-alike
    # environment that the sandbox did not start.
    job = await jobs.launch(node, "all", "setsid sleep 300 & echo $! > ~/child; exec sleep 301")
    status, child = await worker_output(
        jobs.remote,
        node,
        "until [ -s ~/child ]; do sleep 0.05; done; cat ~/child",  # the job writes it soon
    )
    assert status == 0 and child.isdigit()
    env = dict(os.environ, TPUCONSOLE_SANDBOX="1", HOME=str(tmp_path))
    bystander = subprocess.Popen(["sleep", "300"], env=env)
    try:
        victims = [job.workers[0].pid, int(child)]
        assert all(_alive(p) for p in victims)
        if fate == "preempt":
            sandbox.fleet.preempt(zone, "doomed")
        elif fate == "delete":
            await api.delete_node(zone, "doomed")
        else:
            await api.stop_node(zone, "doomed")
        assert await _gone(victims), f"still running after {fate}: {victims}"
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
