"""The Azure Batch JobPrepRelease sample against any broker whose pool already runs node agents.

    python examples/job_prep_release.py mqtt://127.0.0.1:1883 node1 node2 [--prefix batch] [--data-url URL]

With ``--data-url``, the preparation task downloads that file once per node (a resourceFile) and every task
reads it from the preparation's working directory.

Start the agents first (``node-agent run`` per node, see the README); ``node-agent demo`` does all of it.
"""

import argparse
import asyncio
import sys

from node_agent.client.pool import BatchClient
from node_agent.sample import run_sample


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("broker_url")
    parser.add_argument("node_ids", nargs="+")
    parser.add_argument("--prefix", default="batch")
    parser.add_argument("--data-url", default=None, help="a file the preparation task stages once per node")
    args = parser.parse_args()
    async with BatchClient(args.broker_url, topic_prefix=args.prefix) as client:
        await run_sample(
            client, args.node_ids, print, lambda line: print(line, file=sys.stderr), data_url=args.data_url
        )


if __name__ == "__main__":
    asyncio.run(main())
