"""Checks before a launch that turn the seeds' failures into refusals or warnings with a remedy.

A `refuse` stops the launch; a `warn` is shown and the launch goes on; an `offer` proposes an
action (the cleanup) the user can accept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from console.models import LEAVING_REASONS, Node, parse_worker_selection
from console.services.probe import WorkerProbe, node_status, odd_lock_note
from console.services.templates import Template


@dataclass(frozen=True)
class Check:
    level: str  # refuse | warn | offer
    message: str
    remedy: str = ""


def _value(template: Template, values: Mapping[str, Any], name: str) -> Any:
    """What the runner will use: the value given, or the runner's default."""
    given = values.get(name)
    return given if given is not None else template.param(name).runner_default


def preflight(
    template: Template,
    values: Mapping[str, Any],
    node: Node,
    selection: str,
    probes: list[WorkerProbe] | None = None,
) -> list[Check]:
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
    shape = node.shape
    if template.uses_sglang and shape.version in {"v2", "v3"}:
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
    except ValueError as exc:
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


def _grpo_checks(
    template: Template,
    values: Mapping[str, Any],
    node: Node,
    workers: tuple[int, ...],
    checks: list[Check],
) -> None:
    engine = _value(template, values, "rollout_engine")
    multi_node = _value(template, values, "sglang_nnodes") > 1
    if multi_node and not values.get("sglang_dist_init_addr"):
        checks.append(
            Check(
                "refuse",
                "sglang-jax multi-node mode needs the address of node rank 0.",
                "Set sglang_dist_init_addr to HOST:PORT of worker 0 (its internal IP).",
            )
        )
    if len(node.workers) > 1 and engine == "sglang_jax" and not multi_node:
        checks.append(
            Check(
                "warn",
                f"{node.name} is multi-host and the rollout is in-process sglang-jax with no "
                "multi-node settings: the seeds' run failed with 'program continuator has halted'.",
                "Use rollout_engine=vanilla, a host-local rollout mesh, or sglang-jax multi-node "
                "mode with only node_rank 0 taking requests.",
            )
        )
    if len(node.workers) > 1 and len(workers) != len(node.workers):
        checks.append(
            Check(
                "refuse",
                f"GRPO on multi-host {node.name} must run on every worker "
                f"({len(workers)} of {len(node.workers)} chosen).",
                "Use --worker all.",
            )
        )
