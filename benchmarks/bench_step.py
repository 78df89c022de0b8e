"""Cost of one meta-KD (MKD) training iteration relative to an output-KD iteration (not a test).

Builds an EDSR student (32 ch x 4 blocks) and an EDSR teacher (64 ch x 8 blocks, random weights: timing only)
and times ``SRModule.iteration`` - the training iteration that ``training_step`` runs, without the Trainer's
bookkeeping - interleaved (A B C A B C ...) so that machine drift hits every variant alike:

- ``output KD``: teacher forward (no grad) + student forward + ``Distiller(output_weight=0.5,
  rec_weight=0.5)`` + backward + Adam step;
- ``MKD higher`` / ``MKD func``: meta learning on, the given engine: teacher forward once (features only,
  no loss reads its SR image); the meta step (SGD pseudo step, alpha 0.1) on a disjoint meta batch of the
  same size with a KRNet ``Distiller`` (3 KRNets at the ``conf/distill/mkd.yaml`` defaults, 1x1 adapters,
  feature scale 1/255); KRNet Adam step; real student step with the updated KRNets; Adam step.

``--variants`` also takes ``MKD reference`` (the textbook ``create_graph=True`` engine, slow). With ``--all``
also ``KRNet KD``: the same KRNet distiller with ``meta_learn=False`` (the frozen-KRNet
ablation), i.e. the MKD iteration without its meta step. With ``--stages`` also the time per stage of an MKD
iteration, from the ``torch.profiler.record_function`` labels of ``SRModule.iteration``, ``run_iteration`` and
``meta_gradient``.

Peak memory is measured per variant in a fresh subprocess: the increase of the peak resident set size
(``ru_maxrss``) over the resident size once the models, optimizers and batches are built, with the allocator
told to hand freed memory back at once (so the resident size follows the live tensors).

``--paper`` times every method at the paper's shapes instead (EDSR 64x16 <- 256x32, RCAN 10x6 <- 10x20, LR 48,
batch 16), built from the ``conf/`` presets: see ``benchmarks/paper_step.py``.

Run from the repository root (``make bench-step`` preloads jemalloc when installed: glibc malloc makes CPU
timings swing 3x in small VMs)::

    LD_PRELOAD=libjemalloc.so.2 .venv/bin/python benchmarks/bench_step.py [--all | --paper]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from paper_step import photo_batches  # benchmarks/ is on sys.path when this script runs

from meta_kd_sr.distill import Distiller, KRNetLoss
from meta_kd_sr.meta import MetaSettings
from meta_kd_sr.models.edsr import EDSR
from meta_kd_sr.training.module import SRModule

VARIANTS = ("output KD", "MKD higher", "MKD func", "output KD bf16", "MKD higher bf16")
EXTRA_VARIANTS = ("KRNet KD",)
BF16 = " bf16"  # suffix: the variant under bf16 autocast (what trainer.precision=bf16-mixed runs)
OPT_IN_VARIANTS = ("MKD reference",)  # only through --variants
ALL_VARIANTS = VARIANTS + EXTRA_VARIANTS + OPT_IN_VARIANTS
ENGINE = {"MKD higher": "higher", "MKD func": "func", "MKD reference": "reference"}
SCALE = 4
JEMALLOC_PATHS = ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2")


def build_variant(name: str, args: argparse.Namespace) -> Callable[[int], None]:
    """Module, optimizers and batches of one variant; returns ``step(i)`` running training iteration ``i``.

    A name ending in " bf16" is the variant without the suffix, its iteration run under bf16 autocast (the
    weights and optimizer states stay float32, as under ``trainer.precision=bf16-mixed``).
    """
    bf16 = name.endswith(BF16)
    name = name.removesuffix(BF16)
    torch.manual_seed(0)
    student = EDSR(SCALE, n_feats=args.student_feats, n_blocks=args.student_blocks)
    teacher = EDSR(SCALE, n_feats=args.teacher_feats, n_blocks=args.teacher_blocks, res_scale=0.1)
    train = photo_batches(args.batches, args.batch, args.patch, seed=1)
    meta = photo_batches(args.batches, args.batch, args.patch, seed=2)  # disjoint stream (timing only)
    if name == "output KD":
        distiller = Distiller(output_weight=0.5, rec_weight=0.5)
    else:
        distiller = Distiller(
            loss=functools.partial(KRNetLoss, n_kernels=8, kernel_size=3, hidden=64),
            positions=("f1", "f2", "f3"),
            student_channels=student.feature_channels,
            teacher_channels=teacher.feature_channels,
            feature_scale=1 / 255,
            meta_learn=name != "KRNet KD",
        )
    module = SRModule(
        student,
        optimizer=functools.partial(torch.optim.Adam, lr=1e-4),
        scale=SCALE,
        distiller=distiller,
        teacher=teacher,
        meta=MetaSettings(engine=ENGINE.get(name, "higher"), alpha=0.1),
    )
    opts = [entry["optimizer"] for entry in module.configure_optimizers()]
    opt_krnet = opts[1] if module.meta_enabled else None

    def step(i: int) -> None:
        lq, gt = train[i % len(train)]
        batch = {"lq": lq, "gt": gt}
        if opt_krnet is not None:
            meta_lq, meta_gt = meta[i % len(meta)]
            batch = {"train": batch, "meta": {"lq": meta_lq, "gt": meta_gt}}
        with torch.autocast(lq.device.type, dtype=torch.bfloat16, enabled=bf16):
            module.iteration(batch, opts[0], opt_krnet)

    return step


def time_interleaved(names: list[str], args: argparse.Namespace) -> dict[str, list[float]]:
    """Seconds per iteration of every variant, timed in rounds A B C A B C ... after warm-up rounds."""
    steps = {name: build_variant(name, args) for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(args.warmup + args.iters):
        for name, step in steps.items():
            start = time.perf_counter()
            step(i)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)
    return times


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory_child(name: str, args: argparse.Namespace) -> None:
    """Print (JSON) the peak RSS increase of ``args.memory_iters`` iterations of one variant."""
    step = build_variant(name, args)
    base = _rss_bytes()
    for i in range(args.memory_iters):
        step(i)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({"variant": name, "peak_increase": peak - base, "base": base}))


def peak_memory(name: str, args: argparse.Namespace) -> int:
    """Peak RSS increase (bytes) of one variant, measured in a fresh subprocess (same environment)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name] + _forwarded(args)
    # Freed memory goes back to the OS at once (jemalloc: no decay; glibc: large blocks always mmapped), so
    # the resident size follows the live tensors and memory freed while building is not reused unseen.
    env = {
        **os.environ,
        "MALLOC_CONF": "dirty_decay_ms:0,muzzy_decay_ms:0",
        "MALLOC_MMAP_THRESHOLD_": "131072",
    }
    run = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if run.returncode != 0:
        raise RuntimeError(f"memory run of {name!r} failed:\n{run.stderr}")
    return int(json.loads(run.stdout.strip().splitlines()[-1])["peak_increase"])


def _forwarded(args: argparse.Namespace) -> list[str]:
    keys = ("student_feats", "student_blocks", "teacher_feats", "teacher_blocks", "batch", "patch", "batches")
    keys += ("memory_iters", "threads")
    return [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in keys]


def header(args: argparse.Namespace) -> str:
    """How the benchmark was run: versions, threads, allocator, shapes, iteration counts."""
    preload = os.environ.get("LD_PRELOAD", "")
    jemalloc = "yes" if "jemalloc" in preload else "no"
    if jemalloc == "no" and any(Path(p).is_file() for p in JEMALLOC_PATHS):
        jemalloc += " (installed: rerun with LD_PRELOAD=libjemalloc.so.2 for stable timings)"
    return "\n".join(
        [
            f"torch {torch.__version__}, python {platform.python_version()}, {os.cpu_count()} CPUs, "
            f"torch threads {torch.get_num_threads()}, jemalloc preloaded: {jemalloc}, float32 (variants "
            "'... bf16': bf16 autocast, float32 weights), CPU",
            f"x{SCALE}: student EDSR {args.student_feats} ch x {args.student_blocks} blocks, teacher EDSR "
            f"{args.teacher_feats} ch x {args.teacher_blocks} blocks (random weights), batch {args.batch}, "
            f"LR patch {args.patch} (HR {SCALE * args.patch}); MKD: 3 KRNets (8 kernels 3x3, hidden 64, "
            "cosine R), SGD pseudo step alpha 0.1, meta batch of the same size; SRModule.iteration, Adam",
            f"time: {args.iters} interleaved iterations per variant after {args.warmup} warm-up; "
            f"memory: peak RSS increase over {args.memory_iters} iterations, fresh subprocess per variant",
        ]
    )


def report(names: list[str], times: dict[str, list[float]], memory: dict[str, int]) -> str:
    """The table: median seconds per iteration, ratios to output KD (and to KRNet KD when timed), memory."""
    base = names[0]  # the reference: output KD by default
    rows = [
        f"{'variant':<19} {'median s/it':>11} {'min':>7} {'max':>7} {'time x':>7} {'paired x':>8} "
        f"{'peak MiB':>8} {'mem x':>6}"
    ]
    for name in names:
        t = times[name]
        paired = statistics.median(a / b for a, b in zip(t, times[base]))  # same round: drift cancels
        med, ratio = statistics.median(t), statistics.median(t) / statistics.median(times[base])
        row = f"{name:<19} {med:11.3f} {min(t):7.3f} {max(t):7.3f} {ratio:6.2f}x {paired:7.2f}x"
        if memory:
            row += f" {memory[name] / 2**20:8.0f} {memory[name] / memory[base]:5.2f}x"
        rows.append(row)
    rows.append(
        f"x: ratio to {base} (time: of the medians; paired: median over rounds of the per-round ratio). "
        "Target for MKD: <= 1.6x time, <= 1.5x memory."
    )
    for name in names:
        if name.endswith(BF16) and name.removesuffix(BF16) in times:
            fp32 = name.removesuffix(BF16)
            pair = statistics.median(a / b for a, b in zip(times[name], times[fp32]))
            rows.append(f"{name} / {fp32} (bf16 autocast over float32), paired: {pair:.2f}x")
    if "KRNet KD" in times and "MKD higher" in times:
        krnet = [a / b for a, b in zip(times["MKD higher"], times["KRNet KD"])]
        rows.append(
            f"MKD higher / KRNet KD (meta step over frozen-KRNet KD), paired: {statistics.median(krnet):.2f}x"
        )
    return "\n".join(rows)


STAGES = (
    ("iteration/teacher", "teacher forward (features only)"),
    ("iteration/meta_step", "meta step + KRNet step"),
    ("meta/student_forward", "  student forward, KRNet inputs (Distiller.prepare)"),
    ("meta/pseudo_gradient", "  pseudo-step gradient: KRNets, plain bwd"),
    ("meta/meta_forward", "  theta' and meta-batch forward"),
    ("meta/meta_backward", "  meta backward"),
    ("meta/jvp", "    of which the forward-mode pass"),
    ("iteration/student_step", "real student step"),
)


def stage_report(args: argparse.Namespace) -> str:
    """Where an MKD (higher) iteration spends its time, from the library's ``record_function`` labels."""
    step = build_variant("MKD higher", args)
    for i in range(args.warmup):
        step(i)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for i in range(args.stage_iters):
            with torch.profiler.record_function("iteration"):
                step(i)
    events = {e.key: e for e in prof.key_averages()}
    per_it = {key: events[key].cpu_time_total / 1e3 / args.stage_iters for key, _ in STAGES if key in events}
    total = events["iteration"].cpu_time_total / 1e3 / args.stage_iters
    rows = [
        f"MKD higher, {args.stage_iters} profiled iterations (profiler overhead included): {total:.0f} ms/it"
    ]
    rows += [
        f"{label:<56} {per_it[key]:7.0f} ms {per_it[key] / total:6.1%}"
        for key, label in STAGES
        if key in per_it
    ]
    return "\n".join(rows)


def main() -> None:
    """Time the variants interleaved, measure their memory in subprocesses, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student-feats", type=int, default=32)
    parser.add_argument("--student-blocks", type=int, default=4)
    parser.add_argument("--teacher-feats", type=int, default=64)
    parser.add_argument("--teacher-blocks", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--patch", type=int, default=48)
    parser.add_argument("--batches", type=int, default=4, help="distinct batches cycled through")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--memory-iters", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument(
        "--all",
        action="store_true",
        help=f"also time {', '.join(EXTRA_VARIANTS)} (see the module docstring)",
    )
    parser.add_argument("--variants", help="comma-separated variants to run, the first is the reference")
    parser.add_argument(
        "--stages", action="store_true", help="also profile where an MKD iteration spends its time"
    )
    parser.add_argument("--stage-iters", type=int, default=5)
    parser.add_argument("--child", choices=ALL_VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument(
        "--paper", action="store_true", help="every method at the paper's shapes (paper_step)"
    )
    parser.add_argument("--json", type=Path, help="--paper: also write the results to this JSON file")
    parser.add_argument(
        "--store", type=Path, help="--paper: per-variant results, kept to resume a stopped run"
    )
    if "--paper" in sys.argv:
        paper_main(parser)
        return
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        peak_memory_child(args.child, args)
        return
    names = list(VARIANTS + EXTRA_VARIANTS if args.all else VARIANTS)
    if args.variants:
        names = [v.strip() for v in args.variants.split(",")]
        unknown = [v for v in names if v not in ALL_VARIANTS]
        if unknown:
            raise ValueError(f"unknown variants {unknown}; choose from {ALL_VARIANTS}")
    print(header(args), flush=True)
    start = time.perf_counter()
    memory = {} if args.no_memory else {name: peak_memory(name, args) for name in names}
    times = time_interleaved(names, args)
    print()
    print(report(names, times, memory))
    if args.stages:
        print()
        print(stage_report(args))
    print(f"total {time.perf_counter() - start:.0f} s")


def paper_main(parser: argparse.ArgumentParser) -> None:
    """``--paper``: the methods at the paper's shapes on CPU (one torch thread unless --threads)."""
    import paper_step  # noqa: PLC0415 (this folder is on sys.path when the script runs)

    paper = argparse.ArgumentParser(parents=[parser], add_help=False, conflict_handler="resolve")
    paper_step.add_arguments(paper)
    paper.set_defaults(threads=1)
    args = paper.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    print(paper_step.header(args, device), flush=True)
    out = paper_step.run(args, device, log=lambda line: print(line, flush=True), store=args.store)
    print(out["table"])
    if out["stage_table"]:
        print()
        print(out["stage_table"])
    if args.json:
        args.json.write_text(json.dumps({"header": paper_step.header(args, device), **out}, indent=2))


if __name__ == "__main__":
    main()
