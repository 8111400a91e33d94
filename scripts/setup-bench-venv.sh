#!/usr/bin/env bash
# Creates .venv-bench: a benchmark-only Python environment with a current PyTorch 2.x from
# PyPI, for tests/bench/cpu_train_step_vs_torch.py. Never run by CI or by scripts/run-tests.sh;
# idempotent (a second run only checks).
#
# PyPI's Linux x86_64 torch wheel is the CUDA build: its libraries (libtorch_cpu.so included)
# list libcudart, libcupti, cuBLAS, cuDNN, NCCL, ... as DT_NEEDED, and pip would pull several
# GB of nvidia-* wheels for them. A CPU benchmark never calls into any of them, so the wheel is
# installed with --no-deps (plus its small pure-Python dependencies) and each CUDA library it
# links is replaced by a stub built here: a shared object with the same soname and symbol
# versions whose every function returns 100 (cudaErrorNoDevice / CUDA_ERROR_NO_DEVICE), so
# torch.cuda.is_available() is False and the CPU kernels (MKL/oneDNN, all inside
# libtorch_cpu.so) run exactly as in the CPU wheel. The stubs live in one of the directories the
# wheel's RPATH names (site-packages/nvidia/cu13/lib), which the loader searches before the
# system's libraries, so a CUDA toolkit installed on the machine is never mixed in.
#
# usage: scripts/setup-bench-venv.sh            (TORCH_VERSION=2.15.0 BENCH_VENV=.venv-bench)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${BENCH_VENV:-$ROOT/.venv-bench}"
TORCH_VERSION="${TORCH_VERSION:-2.15.0}"
PY="$VENV/bin/python"

for tool in readelf gcc; do
  command -v "$tool" >/dev/null || { echo "setup-bench-venv: needs $tool (binutils, gcc)" >&2; exit 1; }
done
if [ ! -x "$PY" ]; then
  /usr/bin/python3 -m venv "$VENV"
fi
# The installed version from pip's metadata (torch cannot be imported before the stubs exist).
if [ "$("$PY" -c "import importlib.metadata as m; print(m.version('torch'))" 2>/dev/null)" != "$TORCH_VERSION" ]; then
  "$PY" -m pip install -q --disable-pip-version-check --upgrade "setuptools>=77.0.3" pip
  # torch's own pure-Python requirements (its METADATA), then torch without the CUDA wheels.
  "$PY" -m pip install -q --disable-pip-version-check filelock "typing-extensions>=4.13.0" \
      "sympy>=1.13.3" "networkx>=2.5.1" jinja2 "fsspec>=0.8.5" numpy pyyaml
  "$PY" -m pip install -q --disable-pip-version-check --no-deps "torch==$TORCH_VERSION"
fi

# Build the CUDA stubs (again after every torch install; cheap).
"$PY" - <<'EOF'
import os, re, subprocess, sys, sysconfig, tempfile

site = sysconfig.get_paths()["purelib"]
torch_dir = os.path.join(site, "torch")
lib_dir = os.path.join(torch_dir, "lib")
stub_dir = os.path.join(site, "nvidia", "cu13", "lib")
os.makedirs(stub_dir, exist_ok=True)
libs = [os.path.join(lib_dir, f) for f in os.listdir(lib_dir) if ".so" in f]
libs += [os.path.join(torch_dir, f) for f in os.listdir(torch_dir) if f.startswith("_C") and f.endswith(".so")]
shipped = set(os.listdir(lib_dir))
# CUDA family sonames (runtime, driver, math libraries, profiler, collectives, compiler).
cuda = re.compile(r"^lib(cuda|cudart|cublas|cublasLt|cudnn\w*|cufft\w*|cufile\w*|cupti|curand|"
                  r"cusolver\w*|cusparse|cusparseLt|nccl|nvrtc\w*|nvshmem\w*|nvJitLink|"
                  r"nvToolsExt|nvidia-ml)\.so")

def readelf(*args):
    return subprocess.run(["readelf", "-W", *args], check=True, capture_output=True, text=True).stdout

needed, version_file, undefined, unversioned, defined = set(), {}, {}, set(), set()
for lib in libs:
    for m in re.finditer(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", readelf("-d", lib)):
        needed.add(m.group(1))
    current = None
    for line in readelf("-V", lib).splitlines():
        m = re.search(r"File: (\S+)", line)
        if m:
            current = m.group(1)
        m = re.search(r"Name: (\S+)\s+Flags", line)
        if m and current:
            version_file[m.group(1)] = current
    for line in readelf("--dyn-syms", lib).splitlines():
        f = line.split()
        if len(f) < 8:
            continue
        if f[6] != "UND":
            defined.add(f[7].split("@")[0])
        elif "@" in f[7]:
            name, ver = f[7].split("@", 1)
            undefined.setdefault(ver, set()).add((name, f[3]))
        elif f[4] == "GLOBAL":
            unversioned.add((f[7], f[3]))

stubs = sorted(n for n in needed if n not in shipped and cuda.match(n))
if not stubs:
    sys.exit("setup-bench-venv: this torch wheel links no CUDA library; no stubs needed")
# Unversioned references (e.g. cuSPARSELt, NCCL) name no library: those that neither torch nor
# the system libraries it links define are the CUDA ones, and go into every unversioned stub.
paths = dict(re.findall(r"^\s*(\S+) \(.*x86-64.*\) => (\S+)$",
                        subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout, re.M))
for n in needed:
    if n not in shipped and not cuda.match(n) and n in paths:
        for line in readelf("--dyn-syms", paths[n]).splitlines():
            f = line.split()
            if len(f) >= 8 and f[6] != "UND":
                defined.add(f[7].split("@")[0])
orphans = sorted(s for s in unversioned if s[0] not in defined)
for soname in stubs:
    versions = sorted(v for v, f in version_file.items() if f == soname)
    with tempfile.TemporaryDirectory() as tmp:
        src, script = os.path.join(tmp, "stub.c"), os.path.join(tmp, "stub.map")
        with open(src, "w") as c, open(script, "w") as vs:
            c.write("/* CUDA stub for a CPU-only benchmark (scripts/setup-bench-venv.sh). */\n")
            for v in versions:
                syms = sorted(undefined.get(v.split(" ")[0], ()))
                for name, kind in syms:
                    if kind == "OBJECT":
                        c.write(f"char {name}[64];\n")
                    else:
                        c.write(f"int {name}(void) {{ return 100; }}\n")
                vs.write(f"{v} {{ global: {' '.join(n + ';' for n, _ in syms)} }};\n")
            if not versions:
                for name, kind in orphans:
                    c.write(f"char {name}[64];\n" if kind == "OBJECT"
                            else f"int {name}(void) {{ return 100; }}\n")
                vs.write("{ global: *; };\n")
        subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-w", f"-Wl,-soname,{soname}",
                        f"-Wl,--version-script={script}", "-o", os.path.join(stub_dir, soname), src],
                       check=True)
with open(os.path.join(stub_dir, "STUBS.txt"), "w") as f:
    f.write("Not NVIDIA libraries: stubs made by scripts/setup-bench-venv.sh so that the CUDA\n"
            "build of torch imports on a CPU-only machine. Every function returns an error.\n"
            + "\n".join(stubs) + "\n")
print("setup-bench-venv: CUDA stubs:", " ".join(stubs))
EOF

# Check: torch imports, sees no GPU, and trains on the CPU (eager and compiled).
"$PY" - <<'EOF'
import torch
assert not torch.cuda.is_available()
x = torch.randn(64, 64, requires_grad=True)
f = torch.compile(lambda a: torch.nn.functional.gelu(a @ a).sum())
f(x).backward()
assert torch.isfinite(x.grad).all()
print("setup-bench-venv: torch", torch.__version__, "on CPU, threads", torch.get_num_threads(),
      "| BLAS:", "MKL" if torch.backends.mkl.is_available() else "other",
      "| torch.compile ok")
EOF
