"""Where a result came from: the code, the machine and the data a run trained on.

A run's numbers depend on all three: the same seed of DiffRect on the same data ended at 42 and at 66 val Dice on
two CPUs (their kernels round differently, and a training trajectory amplifies the difference). So every run
records them, and a summary that mixes them says so.

- `code_provenance(script)`: the git commit of the checkout, whether `code/` has uncommitted changes, and a hash
  of the training script and the code/ files it imports (the training code itself, commit or not);
- `machine_info()`: CPU model, the vector/matrix instruction sets torch can use, threads, library versions, GPU;
- `data_fingerprint(root)`: a hash of the dataset's list files, every listed file's size and the contents of a
  fixed sample of files, independent of where the folder lies (moving the data keeps it).
"""
import ast
import hashlib
import json
import os
import platform
import subprocess
import sys

CODE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../code
LIST_FILES = ("train_slices.list", "val.list", "test.list", "dataset.json")
SAMPLED_FILES = 8  # content-hashed files per list: cheap at any dataset size, still catches edited data


def _git(*args):
    try:
        out = subprocess.run(["git", "-C", CODE_DIR, *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _module_file(name, code_dir):
    """code/-relative path of module `name` ("utils.trainer") when it is a file or package under code_dir."""
    base = os.path.join(code_dir, *name.split("."))
    for path in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(path):
            return os.path.relpath(path, code_dir)
    return None


def training_code_files(script, code_dir=CODE_DIR):
    """-> sorted code/-relative paths of `script` (e.g. "train_diffrect_ACDC") and every file under code/ it
    imports, directly or not, at the top or inside a function (read from the source, so it works on any checkout
    of the project and costs milliseconds)."""
    seen, todo = set(), [f"{script}.py"]
    while todo:
        rel = todo.pop()
        if rel in seen:
            continue
        seen.add(rel)
        with open(os.path.join(code_dir, rel)) as f:
            tree = ast.parse(f.read(), rel)
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                parts = name.split(".")
                for i in range(1, len(parts) + 1):  # a package's __init__ runs too
                    found = _module_file(".".join(parts[:i]), code_dir)
                    if found:
                        todo.append(found)
    return sorted(seen)


def files_hash(root, relpaths):
    """sha256 over (relative path, contents) of each file, first 16 hex digits."""
    h = hashlib.sha256()
    for rel in sorted(relpaths):
        h.update(rel.replace(os.sep, "/").encode() + b"\0")
        with open(os.path.join(root, rel), "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()[:16]


def code_provenance(script):
    """-> {code_commit, code_dirty, code_hash, code_files} of a training script: commit None outside a git
    checkout; code_dirty: files under code/ differ from that commit (then only code_hash says which code ran);
    code_hash: the script and every code/ file it imports (training_code_files)."""
    files = training_code_files(script)
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--", CODE_DIR)
    return {"code_commit": commit, "code_dirty": None if status is None else bool(status),
            "code_hash": files_hash(CODE_DIR, files), "code_files": len(files)}


def _cpu_flags():
    """-> (model name, set of flags) from /proc/cpuinfo (Linux); elsewhere the platform's processor string."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model, flags


# the instruction sets that change which kernels torch runs on a CPU (and so the rounding of a trajectory)
ISA_FLAGS = (("AVX2", "avx2"), ("AVX-512", "avx512f"), ("AVX512-BF16", "avx512_bf16"), ("AMX", "amx_tile"))


def machine_info():
    """-> {cpu, isa, torch_cpu_capability, threads, torch, numpy, python, gpu}."""
    import numpy as np
    import torch

    model, flags = _cpu_flags()
    gpu = None
    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(torch.cuda.current_device())
    capability = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", lambda: None)()
    return {"cpu": model, "isa": [name for name, flag in ISA_FLAGS if flag in flags],
            "torch_cpu_capability": capability, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "numpy": np.__version__, "python": platform.python_version(), "gpu": gpu}


def machine_label(machine):
    """One short line: 'AMD EPYC, AVX2, 2 threads' (+ the GPU when there is one)."""
    if not machine:
        return "unknown machine"
    isa = machine.get("isa") or []
    widest = "AVX-512" + ("/BF16" if "AVX512-BF16" in isa else "") + ("/AMX" if "AMX" in isa else "") \
        if "AVX-512" in isa else ("AVX2" if "AVX2" in isa else "no AVX2")
    label = f"{machine.get('cpu', '?')}, {widest}, {machine.get('threads', '?')} threads"
    return label + (f", {machine['gpu']}" if machine.get("gpu") else "")


def _listed_files(root):
    """-> [(list name, [paths relative to root])] for the lists of an SSL4MIS folder."""
    out = []
    for name, sub in (("train_slices.list", os.path.join("data", "slices")), ("val.list", "data"),
                      ("test.list", "data")):
        path = os.path.join(root, name)
        if os.path.isfile(path):
            with open(path) as f:
                ids = [line.strip() for line in f if line.strip()]
            out.append((name, [os.path.join(sub, f"{i}.h5") for i in ids]))
    return out


def data_fingerprint(root):
    """-> 16 hex digits: the list files' contents, every listed file's size (missing: -1) and the contents of up to
    SAMPLED_FILES evenly spaced files per list. Paths enter relative to root, so a moved copy keeps it."""
    h = hashlib.sha256()
    for name in LIST_FILES:
        path = os.path.join(root, name)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                h.update(name.encode() + b"\0" + hashlib.sha256(f.read()).digest())
    for name, files in _listed_files(root):
        sizes = []
        for rel in files:
            try:
                sizes.append(os.path.getsize(os.path.join(root, rel)))
            except OSError:
                sizes.append(-1)
        h.update(name.encode() + b"\0" + json.dumps(sizes).encode())
        step = max(1, len(files) // SAMPLED_FILES)
        for rel in files[::step][:SAMPLED_FILES]:
            try:
                with open(os.path.join(root, rel), "rb") as f:
                    h.update(hashlib.sha256(f.read()).digest())
            except OSError:
                h.update(b"missing")
    return h.hexdigest()[:16]
