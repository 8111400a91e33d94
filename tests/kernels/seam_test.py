#!/usr/bin/env python3
# LATTICE_TEST_LABELS: unit
"""model/ and parallel/ compute only through the backend seam (kernels/backend.h, issue 10).

No file there may call the CPU kernels directly (`kernels::cpu`, or include a kernel header other
than kernels/backend.h), copy or clear memory by hand (memcpy, memset), or run an OpenMP loop of
its own: each of those is an op of the backend, so that a device backend replaces all of them.
Fails naming every file:line that does.

Exempt, each for its reason (listed here, so that adding a file to the list is a reviewed change):
  parallel/communicator.cc, parallel/mpi_communicator.cc: the transport of host messages (byte
      buffers of MPI and of the in-process communicator), which a device backend replaces by its
      own collectives library rather than by ops.
  parallel/checkpoint.cc: host-side staging of checkpoint shards for file I/O (the checkpoint
      work of issue 12 owns it; its copies move host bytes between file buffers).
"""
import os
import re
import sys

SOURCE = os.environ.get("LATTICE_SOURCE_DIR",
                        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
FOLDERS = ["model", "parallel"]
EXEMPT = {
    "parallel/communicator.cc",
    "parallel/mpi_communicator.cc",
    "parallel/checkpoint.cc",
}
FORBIDDEN = [
    (re.compile(r"kernels::cpu"), "calls the CPU kernels directly"),
    (re.compile(r"#\s*pragma\s+omp"), "runs an OpenMP loop of its own"),
    (re.compile(r"\bmemcpy\b"), "copies memory by hand (Backend::Copy / CopyFromHost / CopyToHost)"),
    (re.compile(r"\bmemset\b"), "clears memory by hand (Backend::Zero)"),
    (re.compile(r'#\s*include\s+"kernels/(?!backend\.h")[^"]+"'),
     "includes a kernel header (only kernels/backend.h)"),
    (re.compile(r"namespace\s+\w+\s*=\s*kernels::"), "aliases a kernel namespace"),
]


def main():
    findings = []
    checked = 0
    for folder in FOLDERS:
        root = os.path.join(SOURCE, folder)
        if not os.path.isdir(root):
            print(f"seam_test: {root} is missing", file=sys.stderr)
            return 1
        for dirpath, _, files in os.walk(root):
            for name in sorted(files):
                if not name.endswith((".cc", ".h", ".cu", ".inl")):
                    continue
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, SOURCE)
                if rel in EXEMPT:
                    continue
                checked += 1
                with open(path, encoding="utf-8") as f:
                    for number, line in enumerate(f, 1):
                        for pattern, why in FORBIDDEN:
                            if pattern.search(line):
                                findings.append(f"{rel}:{number}: {why}: {line.strip()}")
    # The check must have looked at the files it guards (a moved tree would pass vacuously).
    if checked < 10:
        print(f"seam_test: only {checked} source files found under {FOLDERS} in {SOURCE}",
              file=sys.stderr)
        return 1
    for exempt in sorted(EXEMPT):
        if not os.path.exists(os.path.join(SOURCE, exempt)):
            print(f"seam_test: the exempt file {exempt} no longer exists: drop it from EXEMPT",
                  file=sys.stderr)
            return 1
    if findings:
        print("model/ and parallel/ must compute through kernels/backend.h only:", file=sys.stderr)
        for f in findings:
            print("  " + f, file=sys.stderr)
        return 1
    print(f"seam_test: {checked} files in {', '.join(FOLDERS)} call only the backend "
          f"({len(EXEMPT)} exempt: {', '.join(sorted(EXEMPT))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
