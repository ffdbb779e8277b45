"""The node directory layout of PROTOCOL.md ("Files on a node") and the AZ_BATCH_* variables derived from it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class NodeLayout:
    root: Path
    node_id: str
    pool_id: str

    @property
    def shared(self) -> Path:
        return self.root / "shared"

    @property
    def startup(self) -> Path:
        return self.root / "startup"

    @property
    def workitems(self) -> Path:
        return self.root / "workitems"

    def job_dir(self, job_id: str) -> Path:
        return self.workitems / job_id

    def task_dir(self, job_id: str, task_id: str) -> Path:
        return self.job_dir(job_id) / "job-1" / task_id

    def create(self) -> None:
        """Create the fixed directories (blocking; called once at start-up)."""
        for folder in (self.root, self.startup, self.workitems):
            folder.mkdir(parents=True, exist_ok=True)
        self.shared.mkdir(exist_ok=True)
        os.chmod(self.shared, 0o1777)  # writable by every task user, like /tmp

    def startup_variables(self) -> dict[str, str]:
        """The AZ_BATCH_* variables of the pool's start task (Azure Batch: no job, the startup directory)."""
        return {
            "AZ_BATCH_NODE_ID": self.node_id,
            "AZ_BATCH_POOL_ID": self.pool_id,
            "AZ_BATCH_NODE_ROOT_DIR": str(self.root),
            "AZ_BATCH_NODE_SHARED_DIR": str(self.shared),
            "AZ_BATCH_NODE_STARTUP_DIR": str(self.startup),
            "AZ_BATCH_NODE_STARTUP_WORKING_DIR": str(self.startup / "wd"),
            "AZ_BATCH_NODE_IS_DEDICATED": "true",
            "AZ_BATCH_TASK_DIR": str(self.startup),
            "AZ_BATCH_TASK_WORKING_DIR": str(self.startup / "wd"),
        }

    def batch_variables(self, job_id: str, task_id: str, prep_task_id: str | None) -> dict[str, str]:
        """The AZ_BATCH_* variables of an Azure Batch Linux node for one task of one job."""
        task_dir = self.task_dir(job_id, task_id)
        env = {
            "AZ_BATCH_NODE_ID": self.node_id,
            "AZ_BATCH_POOL_ID": self.pool_id,
            "AZ_BATCH_NODE_ROOT_DIR": str(self.root),
            "AZ_BATCH_NODE_SHARED_DIR": str(self.shared),
            "AZ_BATCH_NODE_STARTUP_DIR": str(self.startup),
            "AZ_BATCH_NODE_IS_DEDICATED": "true",
            "AZ_BATCH_JOB_ID": job_id,
            "AZ_BATCH_TASK_ID": task_id,
            "AZ_BATCH_TASK_DIR": str(task_dir),
            "AZ_BATCH_TASK_WORKING_DIR": str(task_dir / "wd"),
        }
        if prep_task_id is not None:
            prep_dir = self.task_dir(job_id, prep_task_id)
            env["AZ_BATCH_JOB_PREP_DIR"] = str(prep_dir)
            env["AZ_BATCH_JOB_PREP_WORKING_DIR"] = str(prep_dir / "wd")
        return env
