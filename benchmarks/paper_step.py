"""Cost of one training iteration of each method at the paper's shapes (``make bench-step ARGS=--paper``).

Every method is built from its ``conf/`` preset exactly as ``meta-kd-sr-train`` builds it (the
``distill=``/``meta`` groups, the student and teacher presets, Adam from ``conf/optim``), with random weights
(timing only), and ``SRModule.iteration`` - the training iteration without the Trainer's bookkeeping - runs
on random crops of the embedded photos:

- families: ``edsr`` (EDSR-baseline 64 x 16 student, EDSR 256 x 32 teacher with res_scale 0.1) and ``rcan``
  (RCAN 10 x 6 student, RCAN 10 x 20 teacher); x4, LR patch 48, batch 16 (meta batch 16);
- methods: ``scratch`` (distill=none, no teacher forward), ``output``, ``fakd``, ``mkd_frozen`` and ``mkd``
  with each meta engine (``mkd`` = higher, ``mkd_func``, ``mkd_reference``);
- precisions: ``fp32``, and ``bf16`` (the iteration under bf16 autocast, float32 weights: what
  ``trainer.precision=bf16-mixed`` runs);
- speed levers (``--levers``): ``+cl`` (``speed.channels_last``), ``+ct`` (``speed.compile_teacher``), ``+cs``
  (``speed.compile_student``: plain iterations only, so it is timed on scratch and output KD) and, on
  CUDA, ``+cb`` (``trainer.benchmark``: cuDNN picks the fastest convolution algorithm per shape).

Time: on CPU the thread CPU time of each iteration (one torch thread is advised: wall time on a shared
machine swings with its load, CPU time much less); on CUDA the CUDA-event time of each iteration (the
batches are on the GPU already). Memory: on CUDA ``torch.cuda.max_memory_allocated`` over the timed
iterations (absolute, so weights, optimizer states and batches are included); on CPU the peak resident set
size over the timed iterations (``VmHWM``, reset per variant), minus the resident size before them.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from meta_kd_sr.cli import config_dir
from meta_kd_sr.data.embedded import EMBEDDED_PHOTOS, load_photo
from meta_kd_sr.training.module import SRModule

SCALE = 4
FAMILIES = {
    "edsr": ["model=edsr_baseline", "teacher=edsr"],
    "rcan": ["model=rcan_student", "teacher=rcan"],
}
FAMILY_LABELS = {
    "edsr": "EDSR-baseline 64x16 <- EDSR 256x32 (res_scale 0.1)",
    "rcan": "RCAN 10x6 <- RCAN 10x20",
}
# Tiny shapes of the same classes (--tiny): the code path of the paper shapes in seconds, for tests.
TINY = {
    "edsr": ["model.n_feats=8", "model.n_blocks=2", "teacher.net.n_feats=16", "teacher.net.n_blocks=2"],
    "rcan": [
        *("model.n_feats=8", "model.n_groups=3", "model.n_blocks=1", "model.reduction=4"),
        *("teacher.net.n_feats=16", "teacher.net.n_groups=3", "teacher.net.n_blocks=1"),
        "teacher.net.reduction=4",
    ],
}
METHODS = {
    "scratch": ["distill=none"],
    "output": ["distill=output"],
    "fakd": ["distill=fakd"],
    "mkd_frozen": ["distill=mkd_frozen"],
    "mkd": ["distill=mkd", "meta.engine=higher"],
    "mkd_func": ["distill=mkd", "meta.engine=func"],
    "mkd_reference": ["distill=mkd", "meta.engine=reference"],
}
DEFAULT_METHODS = ("scratch", "output", "fakd", "mkd_frozen", "mkd", "mkd_func")
LEVERS = {"cl": "channels_last", "ct": "compile_teacher", "cs": "compile_student", "cb": "cudnn_benchmark"}
MODULE_LEVERS = ("cl", "ct", "cs")
# the methods a lever is timed on: the compiled student serves plain iterations only (no meta step)
LEVER_METHODS = {
    "cs": ("scratch", "output")
}  # SRModule options; "cb" is the global cuDNN flag, set around the variant


@dataclass(frozen=True)
class Variant:
    """One timed configuration: a family, a method, a precision and the speed levers switched on."""

    family: str
    method: str
    precision: str = "fp32"
    levers: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """``family/method/precision[+lever...]``, e.g. ``edsr/mkd/bf16+cl``."""
        return f"{self.family}/{self.method}/{self.precision}" + "".join(f"+{lv}" for lv in self.levers)


@dataclass
class Measured:
    """Per-iteration seconds of one variant and its peak memory (bytes)."""

    variant: Variant
    seconds: list[float]
    peak_bytes: int
    base_bytes: int
    params: dict[str, int] = field(default_factory=dict)

    @property
    def median(self) -> float:
        """Median seconds per iteration."""
        return statistics.median(self.seconds)

    def as_dict(self) -> dict[str, Any]:
        """Plain values for JSON."""
        return {
            **asdict(self.variant),
            "name": self.variant.name,
            "seconds": self.seconds,
            "median_s": self.median,
            "peak_bytes": self.peak_bytes,
            "base_bytes": self.base_bytes,
            "params": self.params,
        }


def compose_method(family: str, method: str, tiny: bool, patch: int, batch: int) -> Any:
    """The train config of ``method`` in ``family`` as the CLI composes it (teacher weights not loaded)."""
    overrides = ["~experiment", *FAMILIES[family], *METHODS[method], "teacher.ckpt_path=unused"]
    overrides += [f"lq_patch={patch}"]  # the paper recipe: no experiment (the bare command is tiny_sr)
    overrides += [f"data.batch_size={batch}", *(TINY[family] if tiny else [])]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=overrides)


def photo_batches(n: int, batch: int, patch: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` pairs ``(lq, gt)``: gt (B, 3, 4p, 4p) random crops of the embedded photos, lq its 4x4 mean."""
    gen = torch.Generator().manual_seed(seed)
    size = SCALE * patch
    photos = [p for p in (load_photo(n).float() / 255 for n in EMBEDDED_PHOTOS) if min(p.shape[-2:]) >= size]
    out = []
    for _ in range(n):
        crops = []
        for _ in range(batch):
            p = photos[int(torch.randint(len(photos), (1,), generator=gen))]
            y = int(torch.randint(p.shape[1] - size + 1, (1,), generator=gen))
            x = int(torch.randint(p.shape[2] - size + 1, (1,), generator=gen))
            crops.append(p[:, y : y + size, x : x + size])
        gt = torch.stack(crops).contiguous()
        out.append((F.avg_pool2d(gt, SCALE), gt))
    return out


def build_step(v: Variant, device: torch.device, tiny: bool, patch: int, batch: int) -> tuple:
    """``(step(i), params)``: the module of ``v`` on ``device`` and a function running iteration ``i``."""
    cfg = compose_method(v.family, v.method, tiny, patch, batch)
    torch.manual_seed(0)
    student, teacher = instantiate(cfg.model), instantiate(cfg.teacher.net)
    distiller = instantiate(
        cfg.distill,
        student_channels=dict(student.feature_channels),
        teacher_channels=dict(teacher.feature_channels),
    )
    levers = {LEVERS[lv]: True for lv in v.levers if lv in MODULE_LEVERS}
    module = SRModule(
        student,
        optimizer=instantiate(cfg.optim.optimizer),
        scale=SCALE,
        distiller=distiller,
        teacher=teacher if distiller.needs_teacher else None,
        meta=OmegaConf.to_container(cfg.meta, resolve=True),
        **levers,
    ).to(device)
    opts = [entry["optimizer"] for entry in module.configure_optimizers()]
    opt_krnet = opts[1] if module.meta_enabled else None
    moved = [(lq.to(device), gt.to(device)) for lq, gt in photo_batches(4, batch, patch, seed=1)]
    meta = [(lq.to(device), gt.to(device)) for lq, gt in photo_batches(4, batch, patch, seed=2)]
    bf16 = v.precision == "bf16"
    params = {"student": sum(p.numel() for p in student.parameters())}
    params["teacher"] = sum(p.numel() for p in teacher.parameters())

    def step(i: int) -> None:
        lq, gt = moved[i % len(moved)]
        batch_in: dict[str, Any] = {"lq": lq, "gt": gt}
        if opt_krnet is not None:
            batch_in = {"train": batch_in, "meta": {"lq": meta[i % 4][0], "gt": meta[i % 4][1]}}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            module.iteration(batch_in, opts[0], opt_krnet)

    return step, params


def warmed_step(v: Variant, device: torch.device, args: Any) -> tuple:
    """``build_step`` of ``v``, after ``args.warmup`` untimed iterations (allocator, cuDNN, compilation)."""
    step, params = build_step(v, device, args.tiny, args.patch, args.batch)
    for i in range(args.warmup):
        step(i)
    return step, params


class CpuMemory:
    """Peak resident set size of this process since ``reset()`` (Linux ``/proc``; 0 where unavailable)."""

    @staticmethod
    def _status(key: str) -> int:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def reset(self) -> int:
        """Reset the peak to the current resident size (``clear_refs`` 5); return that size."""
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass
        return self._status("VmRSS")

    def peak(self) -> int:
        """The peak resident size since the last reset."""
        return self._status("VmHWM")


def measure(v: Variant, device: torch.device, args: Any) -> Measured:
    """Build ``v``, run ``args.warmup`` iterations, then time ``args.iters`` and take the peak memory."""
    autotune = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = "cb" in v.levers
    try:
        return _measure(v, device, args)
    finally:
        torch.backends.cudnn.benchmark = autotune


def _measure(v: Variant, device: torch.device, args: Any) -> Measured:
    step, params = warmed_step(v, device, args)
    cuda = device.type == "cuda"
    memory = CpuMemory()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = memory.reset()
    seconds = [_timed(step, i, device) for i in range(args.warmup, args.warmup + args.iters)]
    peak = torch.cuda.max_memory_allocated(device) if cuda else memory.peak()
    del step
    if cuda:
        torch.cuda.empty_cache()
    return Measured(v, seconds, int(peak), int(base), params)


def _timed(step: Callable[[int], None], i: int, device: torch.device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step(i)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    start_cpu = time.thread_time()
    step(i)
    return time.thread_time() - start_cpu


def variants(
    families: Sequence[str], methods: Sequence[str], precisions: Sequence[str], levers: Sequence[str] = ()
) -> list[Variant]:
    """Every family x method x precision, then each of ``levers`` alone on the methods it serves."""
    out = [Variant(f, m, p) for f in families for p in precisions for m in methods]
    for f in families:
        for p in precisions:
            for lv in levers:
                served = LEVER_METHODS.get(lv, ("output", "mkd"))
                out += [Variant(f, m, p, (lv,)) for m in methods if m in served]
    return out


def table(results: Sequence[Measured], cpu: bool) -> str:
    """Markdown: median time, ratios to output KD and to scratch of the same family/precision, memory."""
    ref = {
        (r.variant.family, r.variant.precision, r.variant.method): r.median
        for r in results
        if not r.variant.levers
    }
    unit = "CPU s/it" if cpu else "GPU ms/it"
    mem = "peak RSS increase MiB" if cpu else "peak allocated MiB"
    rows = [
        f"| variant | {unit} | × output KD | × scratch | {mem} |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        v = r.variant
        t = r.median if cpu else r.median * 1e3
        ratios = []
        for base in ("output", "scratch"):
            b = ref.get((v.family, v.precision, base))
            ratios.append(f"{r.median / b:.2f}×" if b else "-")
        used = (r.peak_bytes - r.base_bytes) if cpu else r.peak_bytes
        rows.append(f"| {v.name} | {t:.3f} | {ratios[0]} | {ratios[1]} | {used / 2**20:.0f} |")
    return "\n".join(rows)


STAGES = (
    ("iteration/teacher", "teacher forward"),
    ("iteration/meta_step", "meta step + KRNet step"),
    ("meta/student_forward", "  student forward + KRNet inputs"),
    ("meta/pseudo_gradient", "  pseudo-step gradient (KRNets, plain backward)"),
    ("meta/meta_forward", "  theta' and meta-batch forward"),
    ("meta/meta_backward", "  meta backward"),
    ("iteration/student_step", "real student step"),
)


def stages(v: Variant, device: torch.device, args: Any) -> dict[str, float]:
    """Seconds per iteration in each labelled stage of ``v`` (profiled; the rest is the student step's)."""
    step, _ = warmed_step(v, device, args)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    n = max(1, args.iters)
    with torch.profiler.profile(activities=activities) as prof:
        for i in range(n):
            with torch.profiler.record_function("iteration"):
                step(i)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
    events = {e.key: e for e in prof.key_averages()}
    keys = ["iteration", *(k for k, _ in STAGES)]
    return {k: events[k].cpu_time_total / 1e6 / n for k in keys if k in events}


def stage_table(per: dict[str, dict[str, float]]) -> str:
    """Markdown: the share of each stage per profiled variant."""
    rows = ["| stage | " + " | ".join(per) + " |", "| --- |" + " ---: |" * len(per)]
    for key, label in STAGES:
        cells = [f"{d[key] / d['iteration']:.0%}" if key in d else "-" for d in per.values()]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    rows.append(
        "| iteration (s, profiled) | " + " | ".join(f"{d['iteration']:.3f}" for d in per.values()) + " |"
    )
    return "\n".join(rows)


def run(
    args: Any, device: torch.device, log: Callable[[str], None] = print, store: Path | None = None
) -> dict[str, Any]:
    """Measure every variant of ``args``; return the results (JSON-ready) and the markdown tables.

    With ``store``, each variant's result is written there as soon as it is measured, and variants already in
    it (by name) are not measured again: a stopped run resumes where it was.
    """
    levers = [lv for lv in (args.levers or []) if device.type == "cuda" or lv not in ("cb",)]
    chosen = variants(args.families, args.methods, args.precisions, levers)
    kept = json.loads(store.read_text()) if store is not None and store.is_file() else {}
    results, errors = [], {}
    for v in chosen:
        if v.name in kept:
            results.append(_from_dict(v, kept[v.name]))
            log(f"  {v.name}: {results[-1].median:.4f} s/it (stored)")
            continue
        start = time.perf_counter()
        try:
            results.append(measure(v, device, args))
        except Exception as err:  # e.g. a lever that does not build here: the other variants still count
            errors[v.name] = f"{type(err).__name__}: {str(err)[:500]}"
            log(f"  {v.name}: failed: {errors[v.name]}")
            continue
        log(f"  {v.name}: {results[-1].median:.4f} s/it ({time.perf_counter() - start:.0f} s)")
        if store is not None:
            kept[v.name] = results[-1].as_dict()
            store.write_text(json.dumps(kept, indent=1))
    per_stage = {}
    if args.stages:
        for f in args.families:
            for m in ("output", "mkd"):
                per_stage[f"{f}/{m}"] = stages(Variant(f, m, args.precisions[0]), device, args)
    return {
        "results": [r.as_dict() for r in results],
        "errors": errors,
        "stages": per_stage,
        "table": table(results, device.type == "cpu"),
        "stage_table": stage_table(per_stage) if per_stage else "",
    }


def _from_dict(v: Variant, d: dict[str, Any]) -> Measured:
    return Measured(v, list(d["seconds"]), int(d["peak_bytes"]), int(d["base_bytes"]), dict(d["params"]))


def add_arguments(parser: Any) -> None:
    """The paper-shape options, shared by ``bench_step.py --paper`` and the GPU check."""
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=list(METHODS))
    parser.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    parser.add_argument(
        "--levers",
        nargs="*",
        choices=list(LEVERS),
        help="also time each lever alone on output/mkd (cb: CUDA)",
    )
    parser.add_argument("--tiny", action="store_true", help="tiny networks of the same presets (tests)")
    parser.add_argument("--patch", type=int, default=48, help="LR patch side")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--stages", action="store_true", help="also profile output KD and MKD by stage")


def header(args: Any, device: torch.device) -> str:
    """How it was run: versions, device, threads, shapes and iteration counts."""
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} torch threads"
    )
    shapes = "tiny presets (--tiny)" if args.tiny else "; ".join(FAMILY_LABELS[f] for f in args.families)
    return (
        f"torch {torch.__version__}, {where}; x{SCALE}, {shapes}; LR patch {args.patch}, batch {args.batch} "
        f"(meta batch {args.batch}); {args.warmup} warm-up + {args.iters} timed iterations per variant "
        f"(medians); SRModule.iteration, Adam; random weights"
    )
