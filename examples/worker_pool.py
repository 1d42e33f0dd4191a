"""A pool of worker processes, each a winerp client ``worker-N``; the dispatcher calls them by name.

Start a hub (``winerp-hub``), then:

    python examples/worker_pool.py --workers 3 --jobs 12

The dispatcher starts the worker processes, waits until every ``worker-N`` is ready on the
hub, hands the jobs out round-robin by name (several at once, from threads: the sync client
is thread-safe), prints the results, tells the workers to stop and exits.

Each worker starts its own client inside its own process. A client never crosses a process
boundary: one inherited through ``fork`` refuses every call (``ClientNotReadyError``), so the
workers are started with the ``spawn`` method and build their client in ``worker_main``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from winerp.sync import Client


def worker_main(number: int, hub_port: int) -> None:
    """One worker process: serve ``work`` until the dispatcher says stop or leaves."""
    done = threading.Event()
    client = Client(f"worker-{number}", port=hub_port)

    # Routes and events first, then start: the dispatcher may call as soon as this worker is
    # ready on the hub, so its route must exist by then.
    @client.route
    def work(source: str, job: int) -> dict[str, int]:
        # Stand-in for real work: the sum of the squares below `job`.
        return {"job": job, "result": sum(i * i for i in range(job)), "pid": os.getpid()}

    @client.event
    def on_winerp_information(data: object, source: str) -> None:
        if data == "stop":
            done.set()

    @client.event
    def on_winerp_peer_leave(name: str) -> None:
        if name == "dispatcher":  # no one left to work for
            done.set()

    with client:
        done.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description="a multiprocessing worker pool over winerp")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--hub-port", type=int, default=13254)
    args = parser.parse_args()
    names = [f"worker-{n}" for n in range(args.workers)]
    context = multiprocessing.get_context("spawn")  # nothing of this process is inherited
    with Client("dispatcher", port=args.hub_port) as client:
        processes = [context.Process(target=worker_main, args=(n, args.hub_port)) for n in range(args.workers)]
        for process in processes:
            process.start()
        deadline = time.monotonic() + 60
        while not set(names) <= set(client.peers()):
            if time.monotonic() > deadline:
                raise SystemExit("the workers did not come up within 60 s")
            time.sleep(0.05)
        print(f"{len(names)} workers ready: {', '.join(names)}", flush=True)

        def dispatch(job: int) -> str:
            name = names[job % len(names)]
            answer = client.request("work", name, job=job * 1000)
            return f"job {job} -> {name} (pid {answer['pid']}): {answer['result']}"

        with ThreadPoolExecutor(max_workers=len(names)) as pool:
            for line in pool.map(dispatch, range(args.jobs)):
                print(line, flush=True)
        client.inform("stop", names)
    for process in processes:
        process.join(30)
    print(f"all {args.jobs} jobs done; workers exited with {[p.exitcode for p in processes]}", flush=True)


if __name__ == "__main__":
    main()
