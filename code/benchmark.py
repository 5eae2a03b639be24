"""Speed and memory of one training iteration per method, on the current device, in one run.

For supervised, FixMatch, DiffRect (before and after --refine_start), BCP (its pre-training and self-training
steps; ABD pre-trains alike), ABD and UniMatch at the given batch and patch size:
median seconds per iteration after warm-up, with data loading excluded (the step on a ready batch) and
included (loader + step); peak memory (RSS on CPU, max allocated on CUDA); the step's FLOPs counted with
torch.utils.flop_counter and the achieved GFLOP/s beside a fp32 matmul peak measured in the same run, at its
start and its end, the higher one counting (their ratio is the efficiency). Each method runs in its own process
so peak memory is its own. Then the ceiling the convolution kernels set: every 3x3 convolution shape of the U-Net
timed alone (forward + backward, same batch), and the efficiency a U-Net step would reach if each of its
convolutions ran at that speed and everything else were free. Prints tables and writes JSON.
--layout_ab also times the evaluation's forward passes alternately NCHW and NHWC (channels_last, test_ACDC.py's
--channels_last), so that a busy shared machine slows both alike.

  python benchmark.py --batch_size 8 --labeled_bs 4 --patch_size 128 128 --iters 5
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter

import torch

from utils.safe_write import write_text

METHODS = {"supervised": "train_fully_supervised_ACDC", "fixmatch": "train_fixmatch_ACDC",
           "diffrect_before": "train_diffrect_ACDC", "diffrect_after": "train_diffrect_ACDC",
           "bcp_pretrain": "train_bcp_ACDC", "bcp": "train_bcp_ACDC", "abd": "train_abd_ACDC",
           "unimatch": "train_unimatch_ACDC"}
# bcp / abd: their self-training step (every timed step after the switch); bcp_pretrain: the pre-training step of
# both (the first quarter of a run by default)
STAGE_FLAGS = {"diffrect_before": ["--refine_start", "100000"], "diffrect_after": ["--refine_start", "0"],
               "bcp": ["--pretrain_iterations", "0"], "abd": ["--pretrain_iterations", "0"],
               "bcp_pretrain": ["--pretrain_iterations", "100000"]}


def matmul_peak(device, n=2048, reps=10):
    """Best fp32 GFLOP/s of an n x n matmul: the machine's practical peak for this precision."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    best = float("inf")
    for _ in range(reps + 2):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def cpu_features():
    flags = ""
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            flags = next((l for l in f if l.startswith("flags")), "")
    return {k: k in flags.split() for k in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")}


def bench_eval(device, patch_size, channels_last, depth=10, reps=3, layout_ab=False):
    """Seconds to evaluate one (depth, H, W) volume: the network's forward passes alone, and forward passes +
    the four metrics (Dice, Jaccard, HD95, ASD per class) as validation and test_ACDC.py run them. The
    prediction is a trained-looking one (the ground truth shifted by 2 pixels), since an untrained network's
    noise would time surface distances on a case no one evaluates."""
    import numpy as np

    from dataloaders.synthetic import make_volume
    from networks.unet import UNet
    from utils.config import memory_format
    from utils.evaluation import predict_volume
    from utils.metrics import case_metrics, class_pool

    image, label = make_volume(np.random.default_rng(0), depth, *patch_size)
    net = UNet(1, 4).to(device, memory_format=memory_format(channels_last, device)).eval()  # as test_ACDC.py
    pred = np.roll(label, 2, axis=2)
    best_fwd, best_all = float("inf"), float("inf")
    with class_pool(4) as per_class:  # the classes in parallel threads, as evaluate() scores them
        for _ in range(reps + 1):
            t0 = time.perf_counter()
            predict_volume(net, image, patch_size, device)
            t1 = time.perf_counter()
            case_metrics(pred, label, 4, executor=per_class)
            t2 = time.perf_counter()
            best_fwd, best_all = min(best_fwd, t1 - t0), min(best_all, t2 - t0)
    result = {"volume": [depth, *patch_size], "forward_s": best_fwd, "forward_and_metrics_s": best_all,
              "ratio": best_all / best_fwd}
    if layout_ab:  # forward passes alone, NCHW and NHWC alternately
        times = {torch.contiguous_format: [], torch.channels_last: []}
        for i in range(2 * reps + 2):
            fmt = (torch.contiguous_format, torch.channels_last)[i % 2]
            net.to(memory_format=fmt)
            t0 = time.perf_counter()
            predict_volume(net, image, patch_size, device)
            times[fmt].append(time.perf_counter() - t0)
        nchw, nhwc = (sorted(times[f][1:])[reps // 2] for f in times)  # the first of each: warm-up
        result.update(forward_nchw_s=nchw, forward_nhwc_s=nhwc, layout_speedup=nchw / nhwc)
    return result


def bench_convs(device, batch_size, patch_size, reps=3):
    """Forward+backward GFLOP/s of each 3x3 conv shape of the U-Net run alone, and the whole U-Net's convs at
    those speeds. -> {"shapes": [...], "unet_conv_gflops": float}."""
    from networks.unet import UNet

    net, shapes = UNet(1, 4), Counter()  # (in, out, h, w) -> how many convs of the U-Net have it

    def count(conv, inputs, _):
        shapes[(conv.in_channels, conv.out_channels, *inputs[0].shape[-2:])] += 1

    hooks = [m.register_forward_hook(count) for m in net.modules()
             if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    with torch.no_grad():
        net(torch.zeros(1, 1, *patch_size))
    for h in hooks:
        h.remove()
    rows, total_flop, total_s = [], 0.0, 0.0
    for (cin, cout, h, w), n in sorted(shapes.items(), key=lambda kv: (-kv[0][2], kv[0][:2])):
        conv = torch.nn.Conv2d(cin, cout, 3, padding=1).to(device)
        is_image = (cin, h, w) == (1, *patch_size)  # the input conv: no gradient w.r.t. the image
        x = torch.randn(batch_size, cin, h, w, device=device, requires_grad=not is_image)
        best = float("inf")
        for _ in range(reps + 1):
            _sync(device)
            t0 = time.perf_counter()
            conv(x).sum().backward()
            _sync(device)
            best = min(best, time.perf_counter() - t0)
        flop = (2 if is_image else 3) * 2 * batch_size * h * w * cin * cout * 9  # forward, grad weight [, input]
        rows.append({"in": cin, "out": cout, "size": [h, w], "count": n, "gflops": flop / best / 1e9})
        total_flop, total_s = total_flop + n * flop, total_s + n * best
    return {"shapes": rows, "unet_conv_gflops": total_flop / total_s / 1e9}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_one(method, a):
    """Runs in a child process: build the script's models and step on a synthetic dataset, time it."""
    import importlib

    from dataloaders.synthetic import generate_dataset
    from utils.trainer import TrainingRun

    script = importlib.import_module(METHODS[method])
    tmp = tempfile.mkdtemp(prefix="bench-")
    root = os.path.join(tmp, "data")
    generate_dataset(root, seed=0, n_train=8, n_val=1, n_test=1, size=tuple(a.patch_size))
    argv = ["--root_path", root, "--snapshot_dir", os.path.join(tmp, "snap"), "--labelnum", "3",
            "--batch_size", str(a.batch_size), "--labeled_bs", str(a.labeled_bs), "--patch_size",
            *map(str, a.patch_size), "--gpu", str(a.gpu), "--max_iterations", "100000", "--amp", a.amp,
            "--deterministic", str(a.deterministic), "--compile", str(a.compile)]
    argv += STAGE_FLAGS.get(method, [])
    args = script.parse_args(argv)
    run = TrainingRun(args, script.BATCHES, script=METHODS[method])  # the batches the script itself trains on
    method_parts = script.build(args, run)
    dev = run.device
    loader = iter(run.loader(0))

    def next_batch():
        return {k: v.to(dev, non_blocking=True) for k, v in next(loader).items()}

    batch = next_batch()
    def step(b, it):
        return run.step(method_parts.train_step, b, it)

    for it in range(1, a.warmup + 1):
        step(batch, it)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _sync(dev)
    excl, incl = [], []
    for it in range(a.warmup + 1, a.warmup + 1 + a.iters):
        t0 = time.perf_counter()
        b = next_batch()
        t1 = time.perf_counter()
        step(b, it)
        _sync(dev)
        t2 = time.perf_counter()
        excl.append(t2 - t1)
        incl.append(t2 - t0)
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        step(batch, a.warmup + a.iters + 1)
    med = lambda xs: sorted(xs)[len(xs) // 2]
    gflop = fc.get_total_flops() / 1e9
    peak_mem = (torch.cuda.max_memory_allocated() / 2 ** 20 if dev.type == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    result = {"method": method, "device": str(dev), "sec_per_iter": med(excl), "sec_per_iter_with_data": med(incl),
              "gflop_per_iter": gflop, "gflops": gflop / med(excl), "peak_mem_mb": peak_mem}
    if a.profile:
        result.update(profile_step(lambda: step(batch, a.warmup + a.iters + 2), dev, a.profile))
    return result


def profile_step(run_step, device, rows):
    """torch.profiler over one step: the top `rows` ops by self time, and on CUDA the share of the step's wall
    time the GPU spends in kernels (below 1 where the step is bound by Python and kernel launches)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        _sync(device)
        t0 = time.perf_counter()
        run_step()
        _sync(device)
        wall = time.perf_counter() - t0
    ops = prof.key_averages()
    out = {"profile": ops.table(sort_by="self_device_time_total" if cuda else "self_cpu_time_total", row_limit=rows)}
    if cuda:  # the kernels themselves (the ops above them carry the same time again), in microseconds
        kernels = [e for e in prof.events()
                   if e.device_type.name == "CUDA" and not getattr(e, "is_user_annotation", False)]
        kernel_s = sum(e.self_device_time_total for e in kernels) / 1e6
        out.update(gpu_kernel_s=kernel_s, gpu_busy=kernel_s / wall, kernels=len(kernels))
    return out


def main(argv=None):
    from utils.config import add_channels_last_flag

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--labeled_bs", type=int, default=4)
    p.add_argument("--patch_size", type=int, nargs=2, default=[128, 128])
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--gpu", type=int, default=0)
    p.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"], help="the training scripts' --amp")
    p.add_argument("--deterministic", type=int, default=1, choices=[0, 1], help="the training scripts' "
                   "--deterministic (0: cudnn.benchmark picks the fastest convolution kernels)")
    p.add_argument("--compile", type=int, default=0, choices=[0, 1],
                   help="the training scripts' --compile (give --warmup enough steps to compile: 5 or more)")
    add_channels_last_flag(p, default=-1)  # test_ACDC.py's, for the evaluation line (training runs NCHW)
    p.add_argument("--layout_ab", action="store_true", help="also time the evaluation forward passes alternately "
                   "NCHW and NHWC (channels_last): the speed-up of test_ACDC.py's --channels_last")
    p.add_argument("--profile", type=int, default=0, metavar="ROWS", help="also profile one step per method and "
                   "print its top ROWS ops (on CUDA with the GPU's busy share of the step)")
    p.add_argument("--out", default="benchmark.json")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(bench_one(a.child, a)))
        return None
    device = torch.device("cuda", a.gpu) if a.gpu >= 0 and torch.cuda.is_available() else torch.device("cpu")
    peak_start = matmul_peak(device)
    rows, failed = [], {}
    for m in a.methods:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", m, *sum([[f"--{k}", str(v)] for k, v in
               [("batch_size", a.batch_size), ("labeled_bs", a.labeled_bs), ("iters", a.iters), ("warmup", a.warmup),
                ("gpu", a.gpu), ("amp", a.amp), ("deterministic", a.deterministic), ("compile", a.compile),
                ("profile", a.profile)]], []),
               "--patch_size", *map(str, a.patch_size)]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=os.path.dirname(os.path.abspath(__file__)))
        if out.returncode:  # the other methods still run and print; the failure is reported with them
            failed[m] = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit code {out.returncode}"
            print(f"benchmark of {m} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    ev = bench_eval(device, tuple(a.patch_size), a.channels_last, layout_ab=a.layout_ab)
    convs = bench_convs(device, a.batch_size, tuple(a.patch_size))
    # measured at both ends, the higher counts: on a shared machine a neighbour can depress one measurement
    peak_end = matmul_peak(device)
    peak = max(peak_start, peak_end)
    for r in rows:
        r["efficiency"] = r["gflops"] / peak
    result = {"device": str(device), "torch": torch.__version__, "evaluation": ev, "threads": torch.get_num_threads(),
              "cpu_features": cpu_features(), "amp": a.amp, "deterministic": a.deterministic, "compile": a.compile,
              "channels_last": a.channels_last, "matmul_peak_gflops": peak,
              "matmul_peak_start_end": [peak_start, peak_end], "batch_size": a.batch_size, "labeled_bs": a.labeled_bs,
              "patch_size": a.patch_size, "methods": rows, "failed": failed, "conv_ceiling": convs}
    fix = next((r for r in rows if r["method"] == "fixmatch"), None)
    feats = result["cpu_features"]
    native_bf16 = result["native_bf16"] = device.type == "cuda" or feats["avx512_bf16"] or feats["amx_bf16"]
    print(f"device {device}, {torch.get_num_threads()} threads, fp32 matmul peak {peak:.0f} GFLOP/s "
          f"(start {peak_start:.0f}, end {peak_end:.0f}), --amp {a.amp}, --deterministic {a.deterministic}, "
          f"--compile {a.compile}, --channels_last {a.channels_last} "
          f"(native bf16: {'yes' if native_bf16 else 'no'}), batch {a.batch_size} ({a.labeled_bs} labeled), "
          f"patch {a.patch_size[0]}x{a.patch_size[1]}")
    print(f"{'method':<17}{'s/it':>8}{'s/it+data':>11}{'GFLOP/it':>10}{'GFLOP/s':>9}{'eff.':>7}{'peak MB':>9}"
          f"{'x FixMatch':>11}")
    for r in rows:
        ratio = f"{r['sec_per_iter'] / fix['sec_per_iter']:.2f}" if fix else "-"
        print(f"{r['method']:<17}{r['sec_per_iter']:>8.3f}{r['sec_per_iter_with_data']:>11.3f}"
              f"{r['gflop_per_iter']:>10.1f}{r['gflops']:>9.1f}{r['efficiency']:>7.0%}{r['peak_mem_mb']:>9.0f}"
              f"{ratio:>11}")
    for m, why in failed.items():
        print(f"{m:<17}failed: {why}")
    if a.layout_ab:
        print(f"evaluation forward passes NCHW / NHWC (channels_last), alternating: {ev['forward_nchw_s']:.3f} / "
              f"{ev['forward_nhwc_s']:.3f} s ({ev['layout_speedup']:.2f}x)")
    for r in rows:
        if "profile" in r:
            busy = f", GPU busy {r['gpu_busy']:.0%} of the step ({r['kernels']} kernels)" if "gpu_busy" in r else ""
            print(f"\nprofile of one {r['method']} step{busy}:\n{r['profile']}")
    print(f"evaluation of a {'x'.join(map(str, ev['volume']))} volume: forward passes {ev['forward_s']:.3f} s, with "
          f"the four metrics {ev['forward_and_metrics_s']:.3f} s ({ev['ratio']:.2f}x the forward passes)")
    print(f"3x3 convolutions of the U-Net alone (forward + backward, batch {a.batch_size}): "
          + ", ".join(f"{r['in']}->{r['out']}@{r['size'][0]} {r['gflops'] / peak:.0%}" for r in convs["shapes"]))
    print(f"the U-Net's convolutions at those speeds: {convs['unet_conv_gflops']:.0f} GFLOP/s = "
          f"{convs['unet_conv_gflops'] / peak:.0%} of the peak (the ceiling for a step made of them)")
    write_text(a.out, lambda f: json.dump(result, f, indent=2), "--out")
    if failed:
        raise SystemExit(f"benchmark of {', '.join(failed)} failed (see above); the others are in {a.out}")
    return result


if __name__ == "__main__":
    from utils.config import run_main

    run_main(main)
