"""The Azure Batch "JobPrepRelease" sample, on a pool of node agents driven through BatchClient.

A job with a preparation task (writes the node id into the node's shared file), a release task (deletes
the file) and eight tasks (each appends its id). Once the tasks completed, each node's file is read through
getFile and printed; the job is terminated, which runs the release task on every node that ran the
preparation; then the preparation and release exit codes of each node are printed.

With a ``data_url`` (the variant for "download common task data once per node"), the preparation task also
gets that file as a resourceFile, so each node downloads it once, into the preparation's working directory;
every task then reads it from there (``AZ_BATCH_JOB_PREP_WORKING_DIR``) and only appends its id if the file
is there and not empty.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from node_agent.client.pool import BatchClient, CommandError
from node_agent.wire.specs import Job, JobPreparationTask, JobReleaseTask, ResourceFile, TaskSpec

JOB_ID = "JobPrepReleaseSampleJob"
FILE_NAME = "job_prep_and_release.txt"
PREP_COMMAND = "/bin/sh -c 'echo $AZ_BATCH_NODE_ID > $AZ_BATCH_NODE_SHARED_DIR/job_prep_and_release.txt'"
TASK_COMMAND = "/bin/sh -c 'echo $AZ_BATCH_TASK_ID >> $AZ_BATCH_NODE_SHARED_DIR/job_prep_and_release.txt'"
DATA_FILE = "shared_data.bin"
DATA_TASK_COMMAND = (
    '/bin/sh -c \'test -s "$AZ_BATCH_JOB_PREP_WORKING_DIR/shared_data.bin" && '
    "echo $AZ_BATCH_TASK_ID >> $AZ_BATCH_NODE_SHARED_DIR/job_prep_and_release.txt'"
)
RELEASE_COMMAND = "/bin/sh -c 'rm $AZ_BATCH_NODE_SHARED_DIR/job_prep_and_release.txt'"
RULE = "-------------------------------------------"

Print = Callable[[str], None]


def sample_job(job_id: str = JOB_ID, data_url: str | None = None) -> Job:
    files = [ResourceFile(http_url=data_url, file_path=DATA_FILE, file_mode="0644")] if data_url else []
    return Job(
        id=job_id,
        job_preparation_task=JobPreparationTask(command_line=PREP_COMMAND, resource_files=files),
        job_release_task=JobReleaseTask(command_line=RELEASE_COMMAND),
    )


def format_contents(node_id: str, text: str) -> list[str]:
    """The file holds the node id, then one task id a line; shown as the sample shows it."""
    lines = text.splitlines()
    first, rest = (lines[0], lines[1:]) if lines else (node_id, [])
    return [
        f"Contents of shared/{FILE_NAME} on {node_id}:",
        RULE,
        f"{first} tasks:",
        *(f"  {t}" for t in rest),
    ]


async def run_sample(
    client: BatchClient,
    node_ids: Sequence[str],
    out: Print,
    progress: Print = lambda _: None,
    *,
    task_count: int = 8,
    job_id: str = JOB_ID,
    timeout_s: float = 120,
    data_url: str | None = None,
) -> dict[str, tuple[int | None, int | None]]:
    """Run the sample on the nodes; returns {node id: (prep exit code, release exit code)}."""
    await client.wait_for_nodes(node_ids, timeout_s=timeout_s)
    progress(f"pool ready: {', '.join(node_ids)}")
    await client.create_job(sample_job(job_id, data_url))
    progress(f"job {job_id} created with a preparation and a release task")
    command = DATA_TASK_COMMAND if data_url else TASK_COMMAND
    for number in range(1, task_count + 1):
        task = await client.add_task(job_id, TaskSpec(id=f"task{number:03d}", command_line=command))
        progress(f"added {task.id} on {task.node_info.node_id if task.node_info else '?'}")
    await client.wait_for_tasks(job_id, timeout_s=timeout_s)
    progress(f"all {task_count} tasks completed")
    prepared = [info.node_id for info in client.prep_release_status(job_id)]
    for node_id in prepared:
        text = (await client.get_file(node_id, f"shared/{FILE_NAME}")).decode()
        for line in format_contents(node_id, text):
            out(line)
        out("")
    progress(f"terminating job {job_id}; the release task runs on {len(prepared)} node(s)")
    await client.terminate_job(job_id, timeout_s=timeout_s)
    codes = _exit_codes(client, job_id)
    for node_id, (prep_code, release_code) in codes.items():
        out(f"{node_id}:")
        out(f"  Prep task exit code:    {prep_code}")
        out(f"  Release task exit code: {release_code}")
    for node_id in sorted(set(node_ids) - set(prepared)):
        out(f"{node_id} got no task, so it ran no preparation and no release task.")
    await _check_deleted(client, prepared, progress)
    await client.delete_job(job_id, timeout_s=timeout_s)
    progress(f"job {job_id} deleted")
    return codes


def _exit_codes(client: BatchClient, job_id: str) -> dict[str, tuple[int | None, int | None]]:
    codes = {}
    for info in client.prep_release_status(job_id):
        prep, release = info.job_preparation_task_execution_info, info.job_release_task_execution_info
        codes[info.node_id] = (prep.exit_code if prep else None, release.exit_code if release else None)
    return codes


async def _check_deleted(client: BatchClient, node_ids: Sequence[str], progress: Print) -> None:
    for node_id in node_ids:
        try:
            await client.get_file(node_id, f"shared/{FILE_NAME}")
            progress(f"{node_id}: shared/{FILE_NAME} is still there")
        except CommandError as exc:
            if exc.code != "FileNotFound":
                raise
            progress(f"{node_id}: the release task deleted shared/{FILE_NAME}")
