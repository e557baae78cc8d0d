"""Run the `vaereg` command in a child process under a memory and a time limit, and measure it.

The child's address space is capped with RLIMIT_AS (an allocation past it fails instead of swapping the
machine), it is killed at the deadline, and its own peak RSS is read from `wait4`.

The command runs under a small launcher: a child's peak RSS (`ru_maxrss`) starts at the peak of the process
it was forked from, and a pytest process that has imported torch and diffusers is past the limit before the
child runs a line of its own. The launcher forks the command from itself, sets the limit, waits for it and
writes its peak RSS to a file; it ends as the command did (same exit status, or the same signal).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

#: Address space the child may reserve: python, numpy, hashing threads and their stacks fit well within.
MEMORY_LIMIT = 1 << 30
TIME_LIMIT = 60.0


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str
    peak_rss: int  # bytes
    killed: bool

    def problems(self) -> list[str]:
        """The child's stderr, one entry per line."""
        return self.stderr.splitlines()


#: argv: limit, report file, command... (see the module docstring).
_LAUNCHER = """
import os, resource, signal, sys
limit, report, command = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
pid = os.fork()
if pid == 0:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    os.execv(command[0], command)
_, status, usage = os.wait4(pid, 0)
with open(report, "w") as f:
    f.write(str(usage.ru_maxrss))
if os.WIFSIGNALED(status):
    signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
    os.kill(os.getpid(), os.WTERMSIG(status))
os._exit(os.waitstatus_to_exitcode(status))
"""


def run_vaereg(
    *args: str | Path,
    home: Path,
    memory: int = MEMORY_LIMIT,
    timeout: float = TIME_LIMIT,
    cwd: Path | None = None,
    program: list[str] | None = None,
) -> Run:
    """`vaereg ARGS...` with its own VAEREG_HOME; waits for it (or kills it at the deadline).

    `program` replaces ``-m vaereg`` (a ``-c`` script that patches something, then calls the CLI's main).
    """
    env = {**os.environ, "VAEREG_HOME": str(home), "MALLOC_ARENA_MAX": "2", "COLUMNS": "400", "NO_COLOR": "1"}
    env.pop("VAEREG_CONFIG", None)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "peak_rss"
        command = [sys.executable, *(program or ["-m", "vaereg"]), *map(str, args)]
        proc = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, str(memory), str(report), *command],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
            cwd=cwd,
            start_new_session=True,  # the deadline kills the launcher and the command together
        )
        fired = threading.Event()

        def kill() -> None:
            fired.set()
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:  # it ended meanwhile
                pass

        killer = threading.Timer(timeout, kill)
        killer.start()
        try:
            _, status, _ = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        peak_kib = int(report.read_text() or 0) if report.exists() else 0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Run(
            returncode=proc.returncode,
            stdout=out.read().decode("utf-8", "replace"),
            stderr=err.read().decode("utf-8", "replace"),
            peak_rss=peak_kib * 1024,
            killed=fired.is_set(),
        )


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def assert_clean_line(line: str, path: Path | str) -> str:
    """`line` is ``vaereg: PATH: reason`` with no control character; returns the reason."""
    prefix = f"vaereg: {path}: "
    assert line.startswith(prefix), line
    assert not _CONTROL.search(line), f"control character in {line!r}"
    assert "Traceback" not in line
    return line[len(prefix) :]
