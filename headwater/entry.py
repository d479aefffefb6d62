"""The ``headwater`` command's entry point. The CLI and its libraries (torch, transformers, FAISS) are imported inside
:func:`main`, so that a process too small to run them gets a one-line error rather than a traceback or an abort."""

from __future__ import annotations

import os
import resource
import sys

ADDRESS_SPACE_FLOOR = 2_560 * 2**20
"""Address space the libraries reserve before doing any work, on top of :data:`THREAD_ADDRESS_SPACE` per core
(measured: a tiny index build aborted under a 2.2 GiB ``ulimit -v`` on 2 cores and finished under 3.4 GiB)."""
THREAD_ADDRESS_SPACE = 128 * 2**20
"""Address space reserved per core: torch, FAISS, DuckDB and the tokenizers each start a thread pool whose stacks are
reserved whole; a thread that cannot get its stack aborts the process, which no error handler can catch."""
SKIP_CHECK = "HEADWATER_SKIP_MEMORY_CHECK"


def address_space_error() -> str | None:
    """Why an address-space cap (``ulimit -v``, RLIMIT_AS) is too small to run at all, or None."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft != hard:  # the soft limit is ours to raise
        try:
            resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    cores = usable_cores()
    needed = ADDRESS_SPACE_FLOOR + THREAD_ADDRESS_SPACE * cores
    if soft == resource.RLIM_INFINITY or soft >= needed or os.environ.get(SKIP_CHECK) == "1":
        return None
    cap = soft
    return (f"the process's address space is capped at {cap / 2**30:.2f} GiB (ulimit -v), below the "
            f"~{needed / 2**30:.2f} GiB that torch, FAISS and DuckDB reserve on {cores} cores (threads that "
            f"cannot reserve their stacks abort the process); raise or remove the cap (memory actually used is less), "
            f"or set {SKIP_CHECK}=1 to try anyway")


def usable_cores() -> int:
    """Cores this process may run on (a Slurm job's share, not the node's), at most ``OMP_NUM_THREADS`` when set."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = os.environ.get("OMP_NUM_THREADS", "")
    return min(cores, int(threads)) if threads.isdigit() and int(threads) > 0 else cores


def main() -> None:
    problem = address_space_error()
    if problem is not None:
        sys.stderr.write(f"error: {problem}\n")
        sys.exit(2)
    try:
        from headwater.cli import app
    except MemoryError:
        sys.stderr.write("error: out of memory while importing headwater's libraries (torch, transformers, FAISS); "
                         "give the process more memory\n")
        sys.exit(2)
    app()
