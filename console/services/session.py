"""The services one console session holds, every one required: what the screens reach.

Built once where the fleet is chosen (the CLI's TUI command, a test fixture); a screen never
checks whether a service is there, and the type checker sees what each one is.
"""

from __future__ import annotations

from dataclasses import dataclass

from console.adapters.history_db import HistoryStore
from console.models import Job
from console.services.chip_metrics import ChipMetricsService
from console.services.fleet import FleetService
from console.services.hangs import HangSettings, HangWatch
from console.services.job_monitor import JobMonitor
from console.services.jobs import JobService
from console.services.launch import LaunchService
from console.services.lifecycle import LifecycleService
from console.services.lock_watch import LockWatch
from console.services.probe import ProbeService
from console.services.remote import RemoteService
from console.services.settings import DEFAULT_STUCK_AFTER_S
from console.services.stacks import StacksService


@dataclass(frozen=True, eq=False)
class Services:
    fleet: FleetService
    jobs: JobService
    prober: ProbeService
    lifecycle: LifecycleService
    locks: LockWatch
    launcher: LaunchService  # launch and upload, with clean-first: the CLI's own workflow
    chips: ChipMetricsService  # HBM and duty cycle of watched nodes' chips (issue 18)
    stacks: StacksService  # every worker's thread stacks of a job, grouped
    stuck_after_s: float = DEFAULT_STUCK_AFTER_S  # config.toml's stuck_after

    @classmethod
    def build(
        cls,
        jobs: JobService,
        *,
        standin: bool = False,
        stuck_after_s: float = DEFAULT_STUCK_AFTER_S,
        chips: ChipMetricsService | None = None,
    ) -> Services:
        """The usual wiring: every service over the jobs' fan-out, its fleet and its history.

        `standin`: the chips are the sandbox's, their numbers stand-ins (said where shown)."""
        fleet = jobs.remote.fleet
        prober = ProbeService(jobs.remote)
        return cls(
            fleet=fleet,
            jobs=jobs,
            prober=prober,
            lifecycle=LifecycleService(fleet, jobs.history, jobs.remote, jobs=jobs),
            locks=LockWatch(prober),
            launcher=LaunchService(jobs, prober),
            chips=chips or ChipMetricsService.for_remote(jobs.remote, prober, standin=standin),
            stacks=StacksService(jobs.remote),
            stuck_after_s=stuck_after_s,
        )

    @property
    def remote(self) -> RemoteService:
        return self.jobs.remote

    @property
    def history(self) -> HistoryStore:
        return self.jobs.history

    def monitor(self, job_id: str, job: Job | None = None) -> JobMonitor:
        """Hang, silence and record sync for one job a screen follows; with the job, "stuck?"
        weighs each worker's silence against its chips' duty cycle (`stuck_after`)."""
        hang = HangWatch(job, HangSettings(after_s=self.stuck_after_s)) if job else None
        return JobMonitor(job_id, self.history, hang=hang)

    async def close(self) -> None:
        """Polling, the connections (ssh, API); the history belongs to whoever opened it."""
        await self.chips.close()
        await self.remote.close()
        await self.fleet.close()
