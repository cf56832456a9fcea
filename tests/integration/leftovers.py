"""Run a command and report the processes it left behind, wherever they went.

The runner makes itself a child subreaper (``PR_SET_CHILD_SUBREAPER``): every process the command
starts that outlives its parent is re-parented to the runner instead of init, so one look at the
runner's children after the command ended finds the orphans, whatever session or process group
they put themselves in. The runner kills what it found and prints it as JSON."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

PR_SET_CHILD_SUBREAPER = 36


def _children(pid: int) -> list[dict]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        state, ppid = fields[0], int(fields[1])
        if ppid == pid and state != "Z":
            found.append({"pid": int(entry), "cmdline": cmdline[:200]})
    return found


def main() -> int:
    """``python leftovers.py SECONDS -- COMMAND...``: run COMMAND with SECONDS of timeout."""
    timeout_s, command = float(sys.argv[1]), sys.argv[3:]
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_CHILD_SUBREAPER refused")
    # Files, not pipes: an orphan that keeps the command's stdout open must not hold us up.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(command, stdout=out, stderr=err, text=True)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.seek(0)
        err.seek(0)
        out, err = out.read(), err.read()
    time.sleep(1.0)  # what is still exiting has a moment to finish
    left = _children(os.getpid())
    for child in left:
        try:
            os.kill(child["pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass
    print(json.dumps({"returncode": proc.returncode, "stdout": out, "stderr": err,
                      "left": left}))
    return 0


def run(command: list[str], timeout_s: float, **popen) -> dict:
    """Run ``command`` under the subreaper; its exit code, output and the orphans it left."""
    result = subprocess.run([sys.executable, __file__, str(timeout_s), "--", *command],
                            capture_output=True, text=True, timeout=timeout_s + 30, **popen)
    if result.returncode != 0:
        raise RuntimeError(f"the leftovers runner failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout)


if __name__ == "__main__":
    sys.exit(main())
