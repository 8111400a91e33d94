"""What the Python tests of tests/launcher and tests/cluster share: where the binary and the
sources are, the environment multi-rank runs need here, and the check/finish reporting.

Import it with
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                    "pylib"))
    import lattice_testing as lt
"""
import os
import sys

LATTICE = os.path.abspath(os.environ.get("LATTICE_BIN", "build/lattice"))
SRC = os.environ.get("LATTICE_SOURCE_DIR",
                     os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
TINY = os.path.join(SRC, "configs", "tiny-gpt2.yaml")
SKIP = 77  # ctest's SKIP_RETURN_CODE for the Python tests (tests/CMakeLists.txt)

# Open MPI as root, more ranks than cores, and no single-copy mechanism in containers
# (REFERENCE.md section 1); one OpenMP thread per rank (the tests oversubscribe 2 cores). A fault
# hook set by whoever runs the suite must not reach the runs the tests start.
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_btl_vader_single_copy_mechanism="none",
           OMPI_MCA_rmaps_base_oversubscribe="1", OMP_NUM_THREADS="1")
ENV.pop("LATTICE_FAULT_INJECT", None)

# What a sanitizer build or a crash leaves on stderr: an expected failure must be a clean one.
CRASH_MARKS = ("Sanitizer", "runtime error:", "Segmentation fault", "terminate called")

# The fields of a metrics row a resumed run must reproduce bit for bit (the rest are timings).
EXACT = ("step", "loss", "grad_norm", "lr", "consumed_samples", "skipped")

failures = []


def clean(output):
    """No crash or sanitizer report in `output`."""
    return not any(m in output for m in CRASH_MARKS)


def check(label, ok, detail=""):
    """Prints [ok]/[FAIL] label (with the tail of `detail` on failure) and records failures."""
    print(("[ok] " if ok else "[FAIL] ") + label + ("" if ok else "\n  " + str(detail)[-4000:]))
    sys.stdout.flush()
    if not ok:
        failures.append(label)
    return ok


def mpirun_present():
    """True when mpirun is on the PATH; otherwise a recorded failure: scripts/install-deps.sh
    installs Open MPI, so a missing mpirun is a broken setup, never a passing test."""
    import shutil
    return check("mpirun is on the PATH (scripts/install-deps.sh installs openmpi-bin)",
                 shutil.which("mpirun") is not None)


def write_random_tokens(path, n=20000, seed=0):
    """A nanoGPT-style uint16 token file of `n` random ids of the byte vocabulary (0..255)."""
    import numpy as np
    np.random.default_rng(seed).integers(0, 256, size=n, dtype=np.uint16).tofile(path)
    return path


def finish(name):
    """The exit status of a test script: 1 and the failed labels, or 0."""
    if failures:
        print(f"{name}: FAILED:\n  " + "\n  ".join(failures))
        return 1
    print(f"{name}: ok")
    return 0
