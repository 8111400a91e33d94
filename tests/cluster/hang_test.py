#!/usr/bin/env python3
"""No hangs (docs/hangs.md): a dead or stopped rank of a 4-rank `mpirun` training run makes every
other rank exit non-zero within the communicator timeout plus a margin, with a message naming it.

1. SIGKILL of world rank 2 (sent by this test once the metrics show step KILL_AFTER): mpirun sees
   its child die and ends the job; the output names rank 2. (LATTICE_COMM_TIMEOUT_S sets the
   timeout here, to check the variable is honoured: without mpirun's own detection, e.g. a node
   that vanishes, the timeout below is what ends the survivors.)
2. SIGSTOP of world rank 2 inside a collective (LATTICE_FAULT_INJECT=collective_stop:2:STEP, the
   rank stops itself right after issuing the first collective of iteration STEP): no process dies,
   so only the timeout (parallel.timeout_seconds) can end the job. Every survivor prints
   "lattice: rank R: communicator timeout: ... not arrived: world rank 2 ...", the job exits with
   124 (kCommTimeoutExitCode), no earlier than the timeout and within timeout + MARGIN of the stop.
3. SIGSTOP of world rank 2 sent by this test from outside mid-run, wherever it is: the same.
4. As 2, with every survivor's MPI_Abort made to hang (LATTICE_FAULT_INJECT abort_hang): the
   abort watchdog ends them with 125 after parallel.abort_watchdog_seconds.

The margin (MARGIN_S), measured from the moment the rank stopped or died:
  + up to one step until every survivor has entered the collective the stopped rank never joins
    (6 ms steps; 0.2 s allowed for the scheduler of 4 ranks on 2 cores),
  + 2 s for the peers to answer "how far did you get" (kAnswerGraceSeconds; the stopped rank never
    answers, so the survivors wait all of it),
  + 1 s for every survivor to print before the abort (kReportSettleSeconds),
  + mpirun's teardown of the job (about 1 s here; 5 s allowed on a loaded machine),
so about 8 s beyond the timeout; 10 s is used. A run that hangs is killed at HANG_KILL_S.
"""
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_common as cc  # noqa: E402

NP = 4
STEPS = 400  # long enough that the run is still going when the fault lands (6 ms steps)
TIMEOUT_S = 10
MARGIN_S = 10
HANG_KILL_S = 120
VICTIM = 2
KILL_AFTER = 5  # steps in the metrics before the external signal
STOP_STEP = 5   # the iteration whose first collective the victim stops in
COMM_TIMEOUT_EXIT = 124  # kCommTimeoutExitCode (parallel/communicator.h)
WATCHDOG_EXIT = 125  # kWatchdogExitCode (parallel/watchdog.h)
WATCHDOG_S = 3
# What a crash or sanitizer report prints; an orderly timeout abort prints none of them.
CRASH_MARKS = ("Sanitizer", "runtime error:", "Segmentation fault", "terminate called")


def rank_pids(mpirun_pid):
    """{world rank: pid} of the ranks mpirun started (its children), from their environment."""
    out = {}
    r = subprocess.run(["ps", "-o", "pid=", "--ppid", str(mpirun_pid)], capture_output=True,
                       text=True)
    for pid in (int(p) for p in r.stdout.split()):
        try:
            env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        for kv in env:
            if kv.startswith(b"OMPI_COMM_WORLD_RANK="):
                out[int(kv.split(b"=", 1)[1])] = pid
    return out


def proc_state(pid):
    """The state letter of /proc/PID/stat ('T' stopped, 'Z' zombie), or None when it is gone."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2]


def run_case(label, tmp, extra_sets=(), env_extra=None, external=None):
    """Starts the 4-rank run; `external` ('KILL' / 'STOP') signals the victim from here once the
    metrics show KILL_AFTER steps. Returns (exit code, output, seconds from the fault to exit)."""
    metrics = os.path.join(tmp, f"{label}.jsonl")
    data = cc.make_data(tmp)
    env = dict(cc.ENV, **(env_extra or {}))
    cmd = cc.mpirun(NP) + [cc.LATTICE] + cc.train_args(data, STEPS, metrics, extra_sets)
    out_path = os.path.join(tmp, f"{label}.out")
    with open(out_path, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    pids = {}
    fault_at = None
    start = time.monotonic()
    try:
        while proc.poll() is None and time.monotonic() - start < HANG_KILL_S:
            if len(pids) < NP:
                pids = rank_pids(proc.pid)
            if fault_at is None and len(pids) == NP:
                if external is not None:
                    if len(cc.rows_of(metrics)) >= KILL_AFTER:
                        os.kill(pids[VICTIM], getattr(signal, "SIG" + external))
                        fault_at = time.monotonic()
                elif proc_state(pids[VICTIM]) == "T":
                    fault_at = time.monotonic()  # the victim stopped itself
            time.sleep(0.005)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            return None, open(out_path).read(), None
    finally:
        # Nothing may outlive the case: a stopped rank would hold its memory forever.
        for pid in pids.values():
            if proc_state(pid) not in (None, "Z"):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
    ended = time.monotonic()
    return proc.returncode, open(out_path).read(), (ended - fault_at) if fault_at else None


def check_survivors(label, rc, out, secs):
    cc.check(f"{label}: the job ended (not killed as hung after {HANG_KILL_S} s)", rc is not None,
             out)
    if rc is None:
        return
    cc.check(f"{label}: the fault was seen", secs is not None, out)
    cc.check(f"{label}: exit status {COMM_TIMEOUT_EXIT} (communicator timeout), got {rc}",
             rc == COMM_TIMEOUT_EXIT, out)
    if secs is not None:
        cc.check(f"{label}: ended {secs:.1f} s after the fault, not before the {TIMEOUT_S} s "
                 f"timeout and within it + {MARGIN_S} s",
                 TIMEOUT_S - 0.5 <= secs <= TIMEOUT_S + MARGIN_S, out)
    # Every survivor prints its own report naming the victim (kReportSettleSeconds lets them).
    for r in range(NP):
        if r == VICTIM:
            continue
        line = next((l for l in out.splitlines()
                     if l.startswith(f"lattice: rank {r}: communicator timeout: ")), "")
        cc.check(f"{label}: rank {r} reports the timeout naming world rank {VICTIM}",
                 f"not arrived: world rank {VICTIM} " in line and "did not answer" in line and
                 f"did not complete within {TIMEOUT_S} s" in line and
                 re.search(r"collective #\d+ on (world|dp|tp|pp|model-parallel|embedding) \(rank ",
                           line) is not None, out)
    # ... and lists the other survivors as arrived, never the victim.
    arrived = [l.split("; arrived: world ranks ", 1)[1].split(";")[0].split(", ")
               for l in out.splitlines()
               if "communicator timeout: " in l and "; arrived: world ranks " in l]
    cc.check(f"{label}: the survivors list each other as arrived, never rank {VICTIM}",
             len(arrived) == NP - 1 and all(str(VICTIM) not in a and len(a) == NP - 2
                                            for a in arrived), out)
    cc.check(f"{label}: no crash", not any(m in out for m in CRASH_MARKS), out)


def main():
    with tempfile.TemporaryDirectory() as tmp:
        # 1. SIGKILL from outside.
        rc, out, secs = run_case("kill", tmp, env_extra={"LATTICE_COMM_TIMEOUT_S": str(TIMEOUT_S)},
                                 external="KILL")
        cc.check(f"kill: the job ended (not killed as hung after {HANG_KILL_S} s)", rc is not None,
                 out)
        if rc is not None:
            cc.check(f"kill: exit status non-zero ({rc})", rc != 0, out)
            cc.check(f"kill: ended {secs} s after the SIGKILL, within {TIMEOUT_S} + {MARGIN_S} s",
                     secs is not None and secs <= TIMEOUT_S + MARGIN_S, out)
            # mpirun ends the job when it sees the rank die; a survivor's own timeout report
            # would name it too, whichever comes first.
            cc.check(f"kill: the output names rank {VICTIM}",
                     f"process rank {VICTIM} with PID" in out or
                     f"not arrived: world rank {VICTIM} " in out, out)

        # 2. SIGSTOP inside a collective (the test hook), timeout from the config.
        rc, out, secs = run_case(
            "stop-in-collective", tmp,
            extra_sets=["--set", f"parallel.timeout_seconds={TIMEOUT_S}"],
            env_extra={"LATTICE_FAULT_INJECT": f"collective_stop:{VICTIM}:{STOP_STEP}"})
        check_survivors("stop-in-collective", rc, out, secs)
        cc.check("stop-in-collective: the victim stopped inside a collective",
                 f"rank {VICTIM} sends itself SIGSTOP at collective_stop of step {STOP_STEP}" in out,
                 out)

        # 3. SIGSTOP from outside, wherever the rank is.
        rc, out, secs = run_case("stop-external", tmp,
                                 extra_sets=["--set", f"parallel.timeout_seconds={TIMEOUT_S}"],
                                 external="STOP")
        check_survivors("stop-external", rc, out, secs)

        # 4. The abort itself hangs (LATTICE_FAULT_INJECT abort_hang): the watchdog ends each
        # survivor with 125 after parallel.abort_watchdog_seconds (+ the 1 s report settle).
        rc, out, secs = run_case(
            "abort-hangs", tmp,
            extra_sets=["--set", f"parallel.timeout_seconds={TIMEOUT_S}",
                        "--set", f"parallel.abort_watchdog_seconds={WATCHDOG_S}"],
            env_extra={"LATTICE_FAULT_INJECT":
                       f"collective_stop:{VICTIM}:{STOP_STEP},abort_hang:*:*"})
        cc.check("abort-hangs: the job ended", rc is not None, out)
        if rc is not None:
            cc.check(f"abort-hangs: exit status {WATCHDOG_EXIT} (the watchdog), got {rc}",
                     rc == WATCHDOG_EXIT, out)
            cc.check(f"abort-hangs: ended {secs} s after the stop, within timeout + watchdog + "
                     f"{MARGIN_S} s", secs is not None and
                     secs <= TIMEOUT_S + WATCHDOG_S + MARGIN_S, out)
            n = sum(1 for l in out.splitlines() if l.startswith("lattice: watchdog: rank ") and
                    "MPI_Abort after a communicator timeout: the process did not end within" in l)
            cc.check("abort-hangs: a survivor's watchdog said why it ended the process", n >= 1,
                     out)
    return cc.finish("hang_test")


if __name__ == "__main__":
    sys.exit(main())
