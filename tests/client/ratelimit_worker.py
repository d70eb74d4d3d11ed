"""One worker of the shared rate-limit test: a separate process (own home folder) that hammers
the sandbox through RossumClient from several coroutines for a while, then prints its counts.

Usage: python -m tests.client.ratelimit_worker API_URL START_EPOCH DURATION_S CONCURRENCY
(token in ROSSFLOW_TEST_TOKEN; the rate limit mode and the state store from the environment).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

from rossflow.rossum import RetryPolicy, RossumClient


async def main(api_url: str, start: float, duration: float, concurrency: int) -> dict[str, int]:
    client = RossumClient(
        api_url,
        token=os.environ["ROSSFLOW_TEST_TOKEN"],
        rate_limit_per_s=10.0,
        retry=RetryPolicy(max_attempts=3, backoff_initial_s=0.05, backoff_max_s=0.2),
    )
    done = errors = 0
    async with client:
        connect = getattr(client.limiter, "connect", None)
        if connect is not None:
            await asyncio.to_thread(connect)  # open the shared store before the clock starts
        await asyncio.sleep(max(0.0, start - time.time()))
        end = start + duration

        async def hammer() -> None:
            nonlocal done, errors
            while time.time() < end:
                try:
                    await client.get_json("v1/queues/1")
                    done += 1
                except Exception:
                    errors += 1

        await asyncio.gather(*(hammer() for _ in range(concurrency)))
    limiter = client.limiter
    return {
        "done": done,
        "errors": errors,
        "sent": client.stats.requests,
        "rate_limited": client.stats.rate_limited,
        "reservations": int(getattr(limiter, "reservations", -1)),
    }


if __name__ == "__main__":
    api, start_at, seconds, parallel = sys.argv[1:5]
    result = asyncio.run(main(api, float(start_at), float(seconds), int(parallel)))
    print(json.dumps(result), flush=True)
