"""The services one console session holds, every one required: what the screens reach.

Built once where the fleet is chosen (the CLI's TUI command, a test fixture); a screen never
checks whether a service is there, and the type checker sees what each one is.
"""

from __future__ import annotations

from dataclasses import dataclass

from console.adapters.history_db import HistoryStore
from console.services.fleet import FleetService
from console.services.job_monitor import JobMonitor
from console.services.jobs import JobService
from console.services.launch import LaunchService
from console.services.lifecycle import LifecycleService
from console.services.lock_watch import LockWatch
from console.services.probe import ProbeService
from console.services.remote import RemoteService


@dataclass(frozen=True, eq=False)
class Services:
    fleet: FleetService
    jobs: JobService
    prober: ProbeService
    lifecycle: LifecycleService
    locks: LockWatch
    launcher: LaunchService  # launch and upload, with clean-first: the CLI's own workflow

    @classmethod
    def build(cls, jobs: JobService) -> Services:
        """The usual wiring: every service over the jobs' fan-out, its fleet and its history."""
        fleet = jobs.remote.fleet
        prober = ProbeService(jobs.remote)
        return cls(
            fleet=fleet,
            jobs=jobs,
            prober=prober,
            lifecycle=LifecycleService(fleet, jobs.history, jobs.remote, jobs=jobs),
            locks=LockWatch(prober),
            launcher=LaunchService(jobs, prober),
        )

    @property
    def remote(self) -> RemoteService:
        return self.jobs.remote

    @property
    def history(self) -> HistoryStore:
        return self.jobs.history

    def monitor(self, job_id: str) -> JobMonitor:
        """Hang, silence and record sync for one job a screen follows."""
        return JobMonitor(job_id, self.history)

    async def close(self) -> None:
        """The connections (ssh, API); the history belongs to whoever opened it."""
        await self.remote.close()
        await self.fleet.close()
