"""`tpuconsole ls` and `tpuconsole sandbox` as a user runs them."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from console.cli import main
from console.sandbox.runtime import Sandbox
from tests.conftest import DEFAULT_NODES, FAST


def test_ls_json_prints_one_object_per_sandbox_node(capsys: pytest.CaptureFixture) -> None:
    assert main(["ls", "--json"]) == 0
    nodes = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_name = {n["name"]: n for n in nodes if "name" in n}  # the requests follow the nodes
    assert set(by_name) == {key.split("/")[1] for key in DEFAULT_NODES}
    spot = by_name["demo-spot-v4-8"]
    assert (spot["state"], spot["spot"], spot["provisioning"]) == ("PREEMPTED", True, "spot")
    v416 = by_name["demo-v4-16"]
    assert [w["index"] for w in v416["workers"]] == [0, 1]
    # The endpoint's port is the TPU runtime's, 8470, as on every real node; not ssh's.
    assert [w["runtime_port"] for w in v416["workers"]] == [8470, 8470]
    assert all(w["external_ip"].startswith("127.") for w in v416["workers"])
    assert v416["zone"] == "us-central2-b" and v416["accelerator_version"] == "v4"
    assert v416["age_seconds"] > 0 and v416["runtime_version"] == "tpu-ubuntu2204-base"


def test_ls_table_marks_the_sandbox_and_shows_states(capsys: pytest.CaptureFixture) -> None:
    assert main(["ls", "--zone", "us-central2-b"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("SANDBOX")
    assert out.splitlines()[1] == "zones: --zone · 1 zone"
    header, *rows = out.split("\n\nQueued resources:")[0].splitlines()[2:]
    assert header.split()[:4] == ["NAME", "ZONE", "TYPE", "STATE"]
    assert len(rows) == len([k for k in DEFAULT_NODES if k.startswith("us-central2-b/")])
    assert {r.split()[0] for r in rows} >= {"demo-v4-8", "demo-spot-v4-8", "demo-v4-16"}
    assert all(r.split()[1] == "us-central2-b" for r in rows)
    assert any(r.split()[0] == "demo-spot-v4-8" and "PREEMPTED" in r.split() for r in rows)
    assert any(r.split()[0] == "demo-reserved-v4-8" and "reserved" in r.split() for r in rows)


def test_ls_exits_non_zero_and_names_an_unreachable_zone(
    capsys: pytest.CaptureFixture,
) -> None:
    with Sandbox.start(Path(os.environ["TPUCONSOLE_HOME"]), ssh=False) as served:
        served.faults.inject(
            "ListNodes",
            grpc.StatusCode.UNAVAILABLE,
            zone="europe-west4-a",
            times=None,
            message="backend down",
        )
        assert main(["ls", "--json"]) == 1
    captured = capsys.readouterr()
    zones = {json.loads(line)["zone"] for line in captured.out.splitlines()}
    assert "europe-west4-a" not in zones and "us-central2-b" in zones
    assert "zone europe-west4-a unreachable" in captured.err
    assert "backend down" in captured.err


def test_a_discovered_zone_without_access_is_one_quiet_line_and_ls_exits_0(
    capsys: pytest.CaptureFixture,
) -> None:
    """asia-east1-c answers PERMISSION_DENIED, as zones outside a TRC grant do."""
    assert main(["ls"]) == 0
    captured = capsys.readouterr()
    summary = [line for line in captured.out.splitlines() if line.startswith("zones:")]
    assert summary == ["zones: discovered · TPU access in 4 of 5 zones"]
    assert captured.err == ""
    assert main(["ls", "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "tpuconsole: zones: discovered · TPU access in 4 of 5 zones\n"
    assert all(json.loads(line)["zone"] != "asia-east1-c" for line in captured.out.splitlines())


def test_a_configured_zone_without_access_keeps_the_failure(
    capsys: pytest.CaptureFixture,
) -> None:
    assert main(["ls", "--zone", "asia-east1-c", "--zone", "us-central2-b"]) == 1
    err = capsys.readouterr().err
    assert "zone asia-east1-c unreachable" in err and "tpu.nodes.list" in err


def test_ls_json_lists_a_node_in_a_state_newer_than_the_client(
    capsys: pytest.CaptureFixture,
) -> None:
    assert main(["ls", "--json", "--zone", "europe-west4-a"]) == 0
    rows = map(json.loads, capsys.readouterr().out.splitlines())
    nodes = {n["name"]: n for n in rows if "name" in n}  # requests follow, without `name`
    assert nodes["demo-v6e-next"]["state"] == "17"
    assert nodes["demo-v5e-8"]["state"] == "READY"


def test_ls_json_keys_are_the_documented_ones(capsys: pytest.CaptureFixture) -> None:
    """The README's `ls --json` table, the code's JSON_KEYS and the output agree."""
    import re

    from console.services.fleet_columns import JSON_KEYS

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("<!-- ls-json-keys -->")[1].split("<!-- /ls-json-keys -->")[0]
    documented = tuple(re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.M))
    assert documented == JSON_KEYS
    assert main(["ls", "--json", "--zone", "us-central2-b"]) == 0
    lines = [tuple(json.loads(line)) for line in capsys.readouterr().out.splitlines()]
    assert [k for k in lines if k[0] == "name"] and all(k == JSON_KEYS for k in lines[:-1])
    # After the nodes, one object per queued resource, its first key telling it apart.
    from console.cli.queued import QUEUED_JSON_KEYS

    queued = readme.split("<!-- ls-json-queued-keys -->")[1]
    assert tuple(re.findall(r"^\| `([a-z_]+)` \|", queued, flags=re.M)) == QUEUED_JSON_KEYS
    assert lines[-1] == QUEUED_JSON_KEYS


def test_ls_shows_requests_their_groups_and_what_holds_quota(
    capsys: pytest.CaptureFixture,
) -> None:
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    section = out.split("Queued resources:")[1]
    assert "demo-multislice" in section and "v4-16 x2" in section
    assert "nodes: demo-ms-0 (READY), demo-ms-1 (READY)" in section
    assert "WAITING_FOR_RESOURCES" in section and "valid for 6h" in section
    assert "finding: Queued resource demo-queue-failed in europe-west4-a is FAILED" in section
    assert main(["ls", "--json", "--zone", "europe-west4-a"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    failed = next(r for r in rows if r.get("queued_resource") == "demo-queue-failed")
    assert failed["holds_quota"] and failed["error"]["code"] == 8 and failed["chips"] == 8


def test_create_queued_waits_in_the_queue_then_delete_takes_the_request(
    capsys: pytest.CaptureFixture,
) -> None:
    args = ["--zone", "us-central2-b", "--type", "v4-8", "--queued", "--valid-for", "6h"]
    assert main(["create", "q-cli", *args]) == 0
    out = capsys.readouterr().out
    for state in ("WAITING_FOR_RESOURCES", "PROVISIONING", "ACTIVE"):
        assert f"queue q-cli: {state} after" in out
    assert "ssh q-cli: READY" in out and "queued resource q-cli ACTIVE after" in out
    assert main(["delete", "q-cli", "--yes"]) == 0
    out = capsys.readouterr().out
    assert "queued resource q-cli: deleted, with its nodes (q-cli)" in out
    assert main(["ls", "--json", "--zone", "us-central2-b"]) == 0
    assert '"q-cli"' not in capsys.readouterr().out


def test_delete_of_a_queued_node_asks_and_says_the_request_goes_with_force(
    capsys: pytest.CaptureFixture,
) -> None:
    assert main(["delete", "demo-ms-0"]) == 2  # no terminal to ask on, no --yes
    err = capsys.readouterr().err
    assert "demo-ms-0 belongs to queued resource demo-multislice" in err
    assert "with force: its nodes (demo-ms-0, demo-ms-1) are deleted too" in err


def test_ls_without_credentials_says_how_to_log_in(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    assert main(["ls", "--project", "my-project", "--zone", "us-central2-b"]) == 2
    err = capsys.readouterr().err
    assert "No Google Cloud credentials" in err
    assert "gcloud auth application-default login" in err


def test_sandbox_reset_refuses_while_another_process_serves_it(
    capsys: pytest.CaptureFixture,
) -> None:
    with Sandbox.start(Path(os.environ["TPUCONSOLE_HOME"]), ssh=False):
        assert main(["sandbox", "reset"]) == 2
    assert "already served" in capsys.readouterr().err
    assert main(["sandbox", "reset"]) == 0


def test_sandbox_serve_prints_endpoints_and_other_commands_join_it(tmp_path: Path) -> None:
    env = dict(os.environ)
    serve = subprocess.Popen(
        [sys.executable, "-m", "console.cli", "sandbox", "serve"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        lines = []
        assert serve.stdout is not None
        for line in serve.stdout:
            lines.append(line.rstrip())
            if line.startswith("serving"):
                break
        assert lines[0].startswith("TPU API (gRPC, insecure): 127.0.0.1:")
        assert any("demo-v4-16 w1: ssh -i" in line for line in lines)
        port = int(next(ln for ln in lines if ln.startswith("ssh port:")).split()[2])
        assert port != 22 and any(f"-p {port} 127." in line for line in lines)
        assert any("demo-spot-v4-8 w0: (no ssh: PREEMPTED)" in line for line in lines)
        ls = subprocess.run(
            [sys.executable, "-m", "console.cli", "ls", "--json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert ls.returncode == 0, ls.stderr
        nodes = [x for x in ls.stdout.splitlines() if x.startswith('{"name"')]
        assert len(nodes) == len(DEFAULT_NODES)
    finally:
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=30) == 0


def test_sandbox_preempt_turns_a_spot_node_preempted_and_refuses_on_demand(
    capsys: pytest.CaptureFixture,
) -> None:
    home = Path(os.environ["TPUCONSOLE_HOME"])
    with Sandbox.start(home, ssh=False) as sandbox:
        sandbox.fleet.create(
            "us-central1-a", "my-spot", "v5litepod-8", "v2-alpha-tpuv5-lite", spot=True
        )
    assert main(["sandbox", "preempt", "my-spot"]) == 0
    assert main(["sandbox", "preempt", "demo-v4-8"]) == 2
    assert "only spot VMs are preempted" in capsys.readouterr().err
    assert main(["ls", "--json", "--zone", "us-central1-a"]) == 0
    states = {
        json.loads(x)["name"]: json.loads(x)["state"] for x in capsys.readouterr().out.splitlines()
    }
    assert states["my-spot"] == "PREEMPTED"


def test_exec_prefixes_lines_by_worker_and_exits_with_the_worst_status(
    capsys: pytest.CaptureFixture,
) -> None:
    code = main(
        [
            "exec",
            "demo-v4-16",
            "--",
            'w=$(basename "$HOME"); echo "hi from $w"; exit $(( ${w#w} * 5 ))',
        ]
    )
    captured = capsys.readouterr()
    assert code == 5
    assert sorted(captured.out.splitlines()) == ["[w0] hi from w0", "[w1] hi from w1"]
    assert "w1: exit 5" in captured.err
    # The closing line of a fan-out: how many ok, the slowest, the failed by name.
    closing = re.search(r"tpuconsole: demo-v4-16: 1/2 ok in [\d.]+ s; slowest: .*", captured.err)
    assert closing is not None, captured.err
    assert closing.group(0).endswith("failed: w1 (exit 5)")


def test_exec_with_several_words_quotes_each(capsys: pytest.CaptureFixture) -> None:
    assert main(["exec", "demo-v4-8", "--worker", "0", "--", "printf", "%s|", "a b", "$HOME"]) == 0
    assert capsys.readouterr().out.strip() == "[w0] a b|$HOME|"


def test_launch_template_dry_run_shows_preflight_and_the_exact_command(
    capsys: pytest.CaptureFixture,
) -> None:
    assert (
        main(
            [
                "launch",
                "multi-engine",
                "demo-v4-8",
                "--preset",
                "tiny-llama",
                "--set",
                "prompt=it's $HOME",
                "--dry-run",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "python -u -m remote.multi_engine --model hf-internal-testing/" in out
    assert "--prompt 'it'\"'\"'s $HOME'" in out
    assert main(["launch", "multi-engine", "demo-v3-8", "--preset", "tiny-llama", "--dry-run"]) == 1
    captured = capsys.readouterr()
    assert "REFUSE: demo-v3-8 is TPU v3" in captured.out
    assert "refused by preflight; nothing launched" in captured.err
    assert main(["launch", "multi-engine", "demo-v4-8", "--set", "num_engines=lots"]) == 2
    assert "not a valid int" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("node", "preset", "flags"),
    [
        ("demo-v4-8", "single-host-sglang", "--steps 10 --rollout-devices 2 "
         "--sglang-mem-fraction-static 0.8"),
        ("demo-v4-16", "multi-host-vanilla", "--steps 10 --rollout-devices 8 --rollout-engine "
         "vanilla --local-model-dir /tmp/models/Qwen__Qwen3-4B-Instruct-2507"),
    ],
)  # fmt: skip
def test_the_seeds_grpo_commands_dry_run_clean_on_their_nodes(
    node: str, preset: str, flags: str, capsys: pytest.CaptureFixture
) -> None:
    assert main(["launch", "grpo", node, "--preset", preset, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"python -u -m remote.grpo {flags}" in out
    assert "REFUSE" not in out and "WARN" not in out


def test_grpo_with_sglang_rollout_on_a_multi_host_node_is_refused_before_launch(
    capsys: pytest.CaptureFixture,
) -> None:
    argv = ["launch", "grpo", "demo-v4-16", "--preset", "single-host-sglang", "--dry-run"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "REFUSE: demo-v4-16 has 2 hosts" in captured.out
    assert "rollout_engine=vanilla" in captured.out
    assert "refused by preflight; nothing launched" in captured.err


def test_create_stop_start_delete_from_the_command_line(capsys: pytest.CaptureFixture) -> None:
    home = Path(os.environ["TPUCONSOLE_HOME"])
    with Sandbox.start(home, timing=FAST):
        assert (
            main(
                [
                    "create",
                    "cli-node",
                    "--zone",
                    "us-central1-a",
                    "--type",
                    "v3-8",
                    "--label",
                    "team=cli",
                    "--wait",
                ]
            )
            == 0
        )
        out = capsys.readouterr().out
        assert (
            "create cli-node (on-demand): CREATING" in out and "cli-node READY (on-demand)" in out
        )
        assert (
            main(["create", "cli-spot", "--zone", "us-central2-b", "--type", "v4-8", "--spot"]) == 3
        )  # 3: the cloud had no room
        err = capsys.readouterr().err
        assert "TPUV4sPreemptiblePodPerProjectPerRegionForTPUAPI" in err
        assert err.rstrip().endswith("[RESOURCE_EXHAUSTED].")
        assert main(["stop", "cli-node", "--yes"]) == 0
        assert "cli-node: STOPPED" in capsys.readouterr().out
        assert main(["start", "cli-node"]) == 0
        assert main(["delete", "cli-node", "--yes"]) == 0
        assert "cli-node: deleted" in capsys.readouterr().out
        assert main(["delete", "demo-v4-8"]) == 2  # no terminal to ask, no --yes
        assert "add --yes" in capsys.readouterr().err


def test_create_with_startup_runs_the_command_as_a_job(capsys: pytest.CaptureFixture) -> None:
    """The key goes into the new node's metadata at create, so its first boot lets us in."""
    home = Path(os.environ["TPUCONSOLE_HOME"])
    with Sandbox.start(home, timing=FAST) as sandbox:
        startup = 'echo "booted as $USER" > ~/booted; cat ~/booted'
        args = ["create", "boot-node", "--zone", "us-central1-a", "--type", "v3-8"]
        assert main([*args, "--wait", "--startup", startup]) == 0
        captured = capsys.readouterr()
        assert "adding your ssh key" not in captured.err  # it was there from the start
        job = next(ln for ln in captured.out.splitlines() if ln.startswith("bootstrap: job "))
        job_id = job.split()[2]
        assert main(["logs", job_id, "--follow"]) == 0
        user = sandbox.fleet.get("us-central1-a", "boot-node").metadata["ssh-keys"].split(":")[0]
        assert capsys.readouterr().out.splitlines() == [f"[w0] booted as {user}"]


def test_exec_adds_your_key_to_a_nodes_metadata_and_says_so(
    capsys: pytest.CaptureFixture,
) -> None:
    assert main(["exec", "demo-v4-8", "--", "echo", "in"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "[w0] in\n"
    assert "tpuconsole: adding your ssh key to demo-v4-8's metadata" in captured.err
    assert main(["exec", "demo-v4-8", "--", "echo", "again"]) == 0
    assert "adding your ssh key" not in capsys.readouterr().err


def test_probe_and_clean_from_the_command_line(capsys: pytest.CaptureFixture) -> None:
    home = Path(os.environ["TPUCONSOLE_HOME"])
    with Sandbox.start(home) as sandbox:
        place = sandbox.worker_place(sandbox.fleet.get("us-central2-b", "demo-v4-8"), 0)
        place.materialise()
        place.lockfile.touch()
        assert main(["probe", "demo-v4-8"]) == 1
        out = capsys.readouterr().out
        assert "demo-v4-8: STALE LOCK" in out and "remove" in out
        assert main(["clean", "demo-v4-8", "--dry-run"]) == 0
        assert place.lockfile.exists()
        capsys.readouterr()
        assert main(["clean", "demo-v4-8", "--yes"]) == 0
        assert "after cleanup: clean" in capsys.readouterr().out
        assert not place.lockfile.exists()


def test_jobs_show_and_stop_by_job_id_from_the_command_line(
    capsys: pytest.CaptureFixture,
) -> None:
    script = 'echo "Train step 1 training loss: 0.75"; echo "DONE: steps=1 elapsed_sec=0.1"'
    assert main(["launch", "demo-v4-8", "--follow", "--", script]) == 0
    job_id = capsys.readouterr().out.split()[1]
    assert main(["jobs", "show", job_id.split("-")[0]]) == 0
    out = capsys.readouterr().out
    assert f"job {job_id}  succeeded  custom" in out
    assert "w0: DONE: steps=1 elapsed_sec=0.1" in out
    assert main(["jobs", "show", job_id, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["metrics"]["losses"] == {"0": [[1, 0.75]]} and record["ended_at"]

    assert main(["launch", "demo-v4-8", "--", "sleep 60"]) == 0
    long_id = capsys.readouterr().out.split()[1]
    assert main(["stop", long_id]) == 2  # destructive: no terminal to ask on, no --yes
    assert "add --yes" in capsys.readouterr().err
    assert main(["stop", long_id, "--yes"]) == 0
    assert capsys.readouterr().out.strip() == "w0: stopped"
    assert main(["jobs", "show", long_id, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "killed"
    assert main(["stop", long_id, "--yes"]) == 0
    assert "already killed; nothing to stop" in capsys.readouterr().out


def test_create_without_a_version_asks_for_the_generations_runtime(
    capsys: pytest.CaptureFixture,
) -> None:
    home = Path(os.environ["TPUCONSOLE_HOME"])
    with Sandbox.start(home, timing=FAST, ssh=False) as sandbox:
        code = main(["create", "cli-v5e", "--zone", "us-central1-a", "--type", "v5litepod-8"])
        assert code == 0
        assert "v2-alpha-tpuv5-lite (default for v5e)" in capsys.readouterr().out
        assert sandbox.fleet.nodes["us-central1-a/cli-v5e"].runtime_version == (
            "v2-alpha-tpuv5-lite"
        )


def test_stop_of_a_pod_is_refused_with_the_reason_and_it_stays_ready(
    capsys: pytest.CaptureFixture,
) -> None:
    home = Path(os.environ["TPUCONSOLE_HOME"])
    with Sandbox.start(home, timing=FAST, ssh=False) as sandbox:
        assert main(["stop", "demo-v4-16", "--yes"]) == 2
        assert main(["start", "demo-v4-16"]) == 2
        assert sandbox.emulator.calls.get("StopNode", 0) == 0
        assert sandbox.fleet.nodes["us-central2-b/demo-v4-16"].state == "READY"
    err = capsys.readouterr().err
    assert "demo-v4-16 is a multi-host slice (2 workers): TPU VM pods cannot be stopped" in err


def test_a_spot_stockout_from_the_command_line(capsys: pytest.CaptureFixture) -> None:
    home = Path(os.environ["TPUCONSOLE_HOME"])
    args = ["--zone", "europe-west4-a", "--type", "v5litepod-8", "--spot"]
    with Sandbox.start(home, timing=FAST):
        assert main(["create", "cli-so", *args, "--wait"]) == 3
        captured = capsys.readouterr()
        assert "create cli-so (spot): FAILED" in captured.out
        assert "No spot capacity for v5litepod-8 in europe-west4-a" in captured.err
        assert main(["create", "cli-so", *args, "--fallback-on-demand"]) == 0
        out = capsys.readouterr().out.splitlines()
    failed = next(i for i, line in enumerate(out) if "(spot): FAILED" in line)
    assert 'There is no more capacity in the zone "europe-west4-a"' in out[failed]
    fallback = next(i for i, line in enumerate(out) if ": FALLBACK" in line)
    on_demand = next(i for i, line in enumerate(out) if "(on-demand): CREATING" in line)
    assert failed < fallback < on_demand
    assert out[-1] == "cli-so CREATING (on-demand); --wait follows it to READY and checks ssh"


def test_clean_and_clean_first_never_follow_a_symlinked_lockfile_to_a_bystander(
    capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    precious = tmp_path / "bystander.lock"
    bystander = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, time\n"
            f"fd = os.open({str(precious)!r}, os.O_CREAT | os.O_RDWR, 0o644)\n"
            "fcntl.lockf(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    home = Path(os.environ["TPUCONSOLE_HOME"])
    try:
        assert bystander.stdout is not None and bystander.stdout.readline().strip() == "held"
        with Sandbox.start(home) as sandbox:
            place = sandbox.worker_place(sandbox.fleet.get("us-central2-b", "demo-v4-8"), 0)
            place.materialise()
            place.lockfile.symlink_to(precious)
            assert main(["clean", "demo-v4-8", "--yes"]) == 1
            out = capsys.readouterr().out
            assert "not followed" in out and "STALE" not in out and "SIGTERM" not in out
            assert main(["launch", "demo-v4-8", "--clean-first", "--", "true"]) == 0
            assert "is a symbolic link" in capsys.readouterr().err
            assert bystander.poll() is None, "the bystander was killed"
            assert place.lockfile.is_symlink() and precious.exists()

            place.lockfile.unlink()
            place.lockfile.mkdir()  # once an IsADirectoryError and a node shown as `? w0`
            assert main(["probe", "demo-v4-8"]) == 1
            assert "demo-v4-8: lockfile is a directory" in capsys.readouterr().out
            assert main(["clean", "demo-v4-8", "--yes"]) == 1
            assert place.lockfile.is_dir()
    finally:
        bystander.kill()
        bystander.wait()


def test_a_job_reference_is_an_id_or_its_number_never_a_pattern(
    capsys: pytest.CaptureFixture,
) -> None:
    assert main(["launch", "demo-v4-8", "--", "sleep 60"]) == 0
    job_id = capsys.readouterr().out.split()[1]
    number = job_id.split("-")[0]
    for ref in ("%", "_", f"{number}%", f"{number}-%", f"{job_id[:-1]}_", "%-%"):
        assert main(["jobs", "stop", ref, "--yes"]) == 2, ref
        assert f"No job {ref!r} in the history." in capsys.readouterr().err
        assert main(["logs", ref]) == 2, ref
        capsys.readouterr()
    assert main(["jobs", "show", job_id, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "running"  # nothing was stopped
    assert main(["jobs", "stop", number, "--yes"]) == 0
    assert capsys.readouterr().out.strip() == "w0: stopped"


def test_jobs_settles_an_unfollowed_job_from_its_rc_file_and_when_it_was_written(
    capsys: pytest.CaptureFixture,
) -> None:
    from datetime import datetime

    home = Path(os.environ["TPUCONSOLE_HOME"])
    with Sandbox.start(home, timing=FAST) as sandbox:
        assert main(["launch", "demo-v4-8", "--", "exit 3"]) == 0
        ended = capsys.readouterr().out.split()[1]
        assert main(["launch", "demo-v4-8", "--", "sleep 60"]) == 0
        running = capsys.readouterr().out.split()[1]
        place = sandbox.worker_place(sandbox.fleet.get("us-central2-b", "demo-v4-8"), 0)
        rc = place.root / ".tpuconsole" / "jobs" / ended / "rc"
        # The wrapper writes rc as the job ends; wait for that, as a user would come back later.
        subprocess.run(["sh", "-c", f"until [ -f {rc} ]; do sleep 0.05; done"], timeout=30)
        two_minutes_ago = time.time() - 120
        os.utime(rc, (two_minutes_ago, two_minutes_ago))

        assert main(["jobs"]) == 0
        table = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines()}
        assert table[ended] == "failed" and table[running] == "running"
        assert main(["jobs", "show", ended, "--json"]) == 0
        record = json.loads(capsys.readouterr().out)
        assert record["workers"][0]["rc"] == 3
        assert datetime.fromisoformat(record["ended_at"]).timestamp() == int(two_minutes_ago)
        assert main(["stop", running, "--yes"]) == 0


def test_logs_on_a_terminal_keep_colours_but_no_other_escape_while_a_pipe_gets_exact_bytes(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io
    import pty

    script = r"printf '\033]0;PWNED\007\033[2Jred: \033[31mR\033[0m\n 5%%\r99%%\n'"
    assert main(["launch", "demo-v4-8", "--follow", "--", script]) == 0
    header, *piped = capsys.readouterr().out.split("\n")[:-1]
    assert piped == ["[w0] \x1b]0;PWNED\x07\x1b[2Jred: \x1b[31mR\x1b[0m", "[w0]  5%\r99%"]
    master, slave = pty.openpty()
    terminal = io.TextIOWrapper(io.FileIO(slave, "w", closefd=False), write_through=True)
    monkeypatch.setattr(sys, "stdout", terminal)
    assert main(["logs", header.split()[1]]) == 0
    monkeypatch.undo()
    shown = os.read(master, 65536).decode()
    os.close(master)
    os.close(slave)
    assert shown.replace("\r\n", "\n").split("\n")[:-1] == [
        "[w0] red: \x1b[0;38;5;1mR\x1b[0m",
        "[w0] 99%",
    ]


def _cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "console.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kw,
    )


def test_exec_forwards_stdin_to_every_worker_and_never_waits_for_an_unread_one() -> None:
    home = Path(os.environ["TPUCONSOLE_HOME"])
    with Sandbox.start(home):
        piped = subprocess.run(
            [sys.executable, "-m", "console.cli", "exec", "demo-v4-8", "--", "cat"],
            input=b"hi\n",
            capture_output=True,
            timeout=60,
        )
        assert piped.returncode == 0, piped.stderr
        assert piped.stdout == b"[w0] hi\n"
        both = _cli("exec", "demo-v4-16", "--", "cat", stdin=subprocess.PIPE)
        out, err = both.communicate(b"one\n" + b"x" * 300_000 + b"\ntwo\n", timeout=60)
        assert both.returncode == 0, err
        for w in (0, 1):
            mine = [line for line in out.decode().splitlines() if line.startswith(f"[w{w}] ")]
            assert mine == [f"[w{w}] one", f"[w{w}] {'x' * 300_000}", f"[w{w}] two"]
        # An input that never ends, to a command that never reads it: done when it is.
        endless = _cli("exec", "demo-v4-8", "--", "echo done", stdin=subprocess.PIPE)
        try:
            assert endless.stdout is not None
            assert endless.stdout.readline() == b"[w0] done\n"
            assert endless.wait(timeout=60) == 0
        finally:
            endless.kill()
            assert endless.stdin is not None
            endless.stdin.close()


@pytest.mark.parametrize(
    ("label", "said"),
    [
        ("k=V", "Label k='V': the value contains invalid character 'V' at index 0;"),
        ("k=a b", "Label k='a b': the value contains invalid character ' ' at index 1;"),
        ("k=$(id)", "Label k='$(id)': the value contains invalid character '$' at index 0;"),
        ("k=" + "x" * 64, "the value is 64 characters long (at most 63);"),
        ("Team=rl", "Label key 'Team' contains invalid character 'T' at index 0:"),
    ],
)
def test_create_refuses_labels_outside_googles_rules_in_one_sentence_before_calling(
    capsys: pytest.CaptureFixture, label: str, said: str
) -> None:
    home = Path(os.environ["TPUCONSOLE_HOME"])
    with Sandbox.start(home, timing=FAST, ssh=False) as sandbox:
        args = ["create", "labelled", "--zone", "us-central1-a", "--type", "v3-8"]
        assert main([*args, "--label", label]) == 2
        err = capsys.readouterr().err
        assert said in err and err.count("\n") == 1 and err.count(". ") == 0
        assert "us-central1-a/labelled" not in sandbox.fleet.nodes
        assert sandbox.emulator.calls.get("CreateNode", 0) == 0  # refused here, not by the API


def test_create_in_an_unknown_zone_or_with_a_bogus_version_says_what_google_said(
    capsys: pytest.CaptureFixture,
) -> None:
    home = Path(os.environ["TPUCONSOLE_HOME"])
    with Sandbox.start(home, timing=FAST, ssh=False) as sandbox:
        assert main(["create", "lost", "--zone", "nowhere-9", "--type", "v4-8"]) == 2
        err = capsys.readouterr().err
        assert "Location nowhere-9 is not found or access is unauthorized." in err
        assert "`tpuconsole ls` lists the zones" in err
        args = ["create", "odd", "--zone", "us-central1-a", "--type", "v3-8", "--version"]
        assert main([*args, "bogus"]) == 2
        err = capsys.readouterr().err
        assert 'The field "RuntimeVersion" cannot be "bogus"' in err
        assert "Choose a version the zone offers" in err
        assert not {"nowhere-9/lost", "us-central1-a/odd"} & set(sandbox.fleet.nodes)


def test_launch_group_runs_on_both_slices_with_their_megascale_values_and_one_slice_is_refused(
    capsys: pytest.CaptureFixture,
) -> None:
    echo = ["sh", "-c", "echo slice $MEGASCALE_SLICE_ID of $MEGASCALE_NUM_SLICES"]
    # One slice alone would wait forever for the other: refused, nothing started.
    assert main(["launch", "demo-ms-1", "--", *echo]) == 1
    captured = capsys.readouterr()
    assert "REFUSE: demo-ms-1 is one slice of multislice request demo-multislice" in captured.out
    assert "launch --group" in captured.out and "nothing launched" in captured.err
    assert main(["launch", "demo-ms-1", "--group", "--worker", "0", "--", *echo]) == 2
    assert "every worker of every slice must run the program" in capsys.readouterr().err

    assert main(["launch", "demo-ms-1", "--group", "--", *echo]) == 0
    started = re.findall(
        r"^job (\S+) running on (\S+): w0:pid \d+ w1:pid \d+$", capsys.readouterr().out, re.M
    )
    assert [node for _, node in started] == ["demo-ms-0", "demo-ms-1"]
    for slice_id, (job, _) in enumerate(started):
        assert main(["logs", job, "-f"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert sorted(lines) == [f"[w0] slice {slice_id} of 2", f"[w1] slice {slice_id} of 2"]
