"""Checks before a launch that turn the seeds' failures into refusals or warnings with a remedy.

A `refuse` stops the launch; a `warn` is shown and the launch goes on; an `offer` proposes an
action (the cleanup) the user can accept.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from console.models import (
    LEAVING_REASONS,
    Check,
    Node,
    WorkerProbe,
    WorkerSelectionError,
    node_status,
    odd_lock_note,
    parse_worker_selection,
)
from console.services.templates import Template


def _value(template: Template, values: Mapping[str, Any], name: str) -> Any:
    """What the runner will use: the value given, or the runner's default."""
    given = values.get(name)
    return given if given is not None else template.param(name).runner_default


def one_slice_refusal(node: Node, in_group: bool) -> Check | None:
    """A launch on one slice of a multislice group, which no command escapes: templates and
    commands given as is alike."""
    if not node.multislice_node or in_group:
        return None
    return Check(
        "refuse",
        f"{node.name} is one slice of multislice request {node.queued_resource}: a "
        "program on one slice waits forever for the others.",
        "Launch on the group (every worker of every slice, with the MEGASCALE "
        "environment): choose the group's row, or `launch --group`.",
    )


def preflight(
    template: Template,
    values: Mapping[str, Any],
    node: Node,
    selection: str,
    probes: list[WorkerProbe] | None = None,
    *,
    in_group: bool = False,
) -> list[Check]:
    """`in_group`: the launch is on the node's whole multislice group, not on it alone."""
    checks: list[Check] = []
    if node.state != "READY":
        checks.append(
            Check(
                "refuse",
                f"{node.name} is {node.state}, not READY.",
                LEAVING_REASONS.get(node.state, "Wait for READY or start the node."),
            )
        )
        return checks
    if (part := one_slice_refusal(node, in_group)) is not None:
        checks.append(part)
        return checks
    shape = node.shape
    if _runs_sglang(template, values) and shape.version in {"v2", "v3"}:
        checks.append(
            Check(
                "refuse",
                f"{node.name} is TPU {shape.version}: sgl-jax fails there with "
                "'TPU version must be 4 or higher'.",
                "Use a v4, v5e, v5p or v6e node.",
            )
        )
    try:
        workers = parse_worker_selection(selection, len(node.workers))
    except WorkerSelectionError as exc:
        checks.append(Check("refuse", str(exc)))
        return checks
    if template.name == "multi-engine":
        _multi_engine_checks(template, values, node, checks)
    if template.name == "grpo":
        _grpo_checks(template, values, node, workers, checks)
    if probes and template.uses_tpu:
        stale = [
            p
            for p in probes
            if p.report is not None
            and (p.report.stale_lock or p.report.foreign_lock or p.report.lingering)
        ]
        for p in probes:
            if p.report is not None and p.report.odd_lock:
                checks.append(Check("warn", f"w{p.worker}: {odd_lock_note(p.report)}"))
        if stale:
            checks.append(
                Check(
                    "offer",
                    f"{node.name}: {node_status(stale)} on the target workers; the run "
                    "would fail with 'TPU is already in use'.",
                    "Clean first (the launch can do it: stale holders are stopped, the lockfile "
                    "removed only when nobody holds it).",
                )
            )
    return checks


def _multi_engine_checks(
    template: Template, values: Mapping[str, Any], node: Node, checks: list[Check]
) -> None:
    engines = _value(template, values, "num_engines")
    chips = node.shape.chips_per_host
    if engines > chips:
        checks.append(
            Check(
                "refuse",
                f"{engines} engines on a host with {chips} chips: one engine per device.",
                f"Set num_engines to at most {chips}.",
            )
        )
    if template.single_host and len(node.workers) > 1:
        # One worker of a multi-host slice cannot start the TPU alone, and all of them together
        # make JAX see several processes, which the runner refuses.
        checks.append(
            Check(
                "refuse",
                f"{node.name} has {len(node.workers)} hosts; the multi-engine test runs "
                "in one process on a single-host slice.",
                "Use a single-host node such as a v4-8 (or a v5e-8).",
            )
        )
    concurrency = _value(template, values, "concurrency")
    if concurrency > 1 and not values.get("warmup_sequential"):
        checks.append(
            Check(
                "warn",
                f"concurrency {concurrency} without a sequential warm-up: the seeds saw "
                "this stall.",
                "Turn on warmup_sequential (the run that succeeded did).",
            )
        )


def _runs_sglang(template: Template, values: Mapping[str, Any]) -> bool:
    if template.name == "grpo":
        engine = values.get("rollout_engine")
        if engine is None and values.get("model") == "toy":
            engine = "vanilla"  # the runner's default for its toy
        return (engine or template.param("rollout_engine").runner_default) == "sglang_jax"
    if template.name == "multi-engine":
        return values.get("engine") != "reference"  # the reference engine runs anywhere
    return template.uses_sglang


def _grpo_checks(
    template: Template,
    values: Mapping[str, Any],
    node: Node,
    workers: tuple[int, ...],
    checks: list[Check],
) -> None:
    hosts = len(node.workers)
    if hosts > 1 and _runs_sglang(template, values):
        # remote/grpo.py refuses it on every worker too; said here before anything starts.
        checks.append(
            Check(
                "refuse",
                f"{node.name} has {hosts} hosts and the rollout is in-process sglang-jax, which "
                "cannot span processes: the seeds' run died with 'The program continuator has "
                "halted unexpectedly' (each host's scheduler ran alone while the program ran "
                "across hosts).",
                "Set rollout_engine=vanilla (the seeds' multi-host run), or run sglang-jax as "
                "separate single-host servers outside this job.",
            )
        )
    devices = _value(template, values, "rollout_devices")
    if node.shape.chips and devices > node.shape.chips:
        checks.append(
            Check(
                "refuse",
                f"rollout_devices {devices} on {node.name}, which has {node.shape.chips} chips.",
                f"Set rollout_devices to at most {node.shape.chips}.",
            )
        )
    checkpoints = str(values.get("checkpoint_dir") or "")
    if hosts > 1 and checkpoints and not checkpoints.startswith("gs://"):
        checks.append(
            Check(
                "warn",
                f"checkpoint_dir {checkpoints} is on each host's own disk; orbax writes one "
                "checkpoint from all hosts together.",
                "Use a directory every host sees, such as gs://BUCKET/path.",
            )
        )
    if hosts > 1 and len(workers) != hosts:
        checks.append(
            Check(
                "refuse",
                f"GRPO on multi-host {node.name} must run on every worker "
                f"({len(workers)} of {hosts} chosen).",
                "Use --worker all.",
            )
        )
