"""``meta-kd-sr-export ckpt_path=<checkpoint> out=<base> [formats=[pt,torchscript,onnx]]``: the student alone.

- ``pt``: ``{"state_dict", "config"}`` (:func:`meta_kd_sr.models.checkpoint.save_student`), which
  ``meta-kd-sr-eval``/``meta-kd-sr-upscale`` and ``student_from_checkpoint`` rebuild;
- ``torchscript``: ``torch.jit.script`` of :class:`meta_kd_sr.evaluation.inference.SRForward`, a plain
  ``lq -> sr`` module (networks that are not an ``SRNet`` are traced instead);
- ``onnx``: ``torch.onnx.export`` (the dynamo exporter, torch's default) of the same module, one
  self-contained file, with dynamic batch, height and width by default.

Every TorchScript and ONNX file is reloaded after writing and run on an input of another size than the export
example; its output must match the eager network to ``CHECK_ATOL`` (ONNX needs ``onnxruntime`` for that run,
else only the graph is checked).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from meta_kd_sr.evaluation.inference import SRForward, resolve_device
from meta_kd_sr.models import SRNet
from meta_kd_sr.models.checkpoint import exportable_student, save_student
from meta_kd_sr.runtime.atomic import atomic_path
from meta_kd_sr.runtime.console import TORCHVISION_NOTE, drop_exact_log, format_outputs, one_line_errors

FORMATS = ("pt", "torchscript", "onnx")
DYNAMIC = {"all": {0: "batch", 2: "height", 3: "width"}, "hw": {2: "height", 3: "width"}, "none": None}
DEFAULT_OPSET = 18
# Largest |exported - eager| accepted on [0, 1] outputs: 1/40 of a uint8 level (float32 rounding differs).
CHECK_ATOL = 1e-4


class _PlainForward(nn.Module):
    """``lq -> net(lq)`` for networks that are not an ``SRNet`` (traced, not scripted)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, lq: torch.Tensor) -> torch.Tensor:
        """lq: (B, 3, h, w) -> sr: (B, 3, h * scale, w * scale)."""
        return self.net(lq)


def output_paths(out_path: str | Path, formats: list[str]) -> dict[str, Path]:
    """The file of each format: ``<base>.pt``, ``<base>.torchscript.pt``, ``<base>.onnx``.

    ``<base>`` is ``out_path`` without a ``.pt``/``.pth``/``.onnx`` suffix; ``pt`` goes to ``out_path`` itself
    when it ends in ``.pt``/``.pth``.
    """
    out_path = Path(out_path)
    base = out_path.with_suffix("") if out_path.suffix in (".pt", ".pth", ".onnx") else out_path
    paths = {
        "pt": out_path if out_path.suffix in (".pt", ".pth") else Path(f"{base}.pt"),
        "torchscript": Path(f"{base}.torchscript.pt"),
        "onnx": Path(f"{base}.onnx"),
    }
    return {f: paths[f] for f in formats}


def export(
    ckpt_path: str | Path,
    out_path: str | Path,
    formats: Sequence[str] = ("pt",),
    opset: int = DEFAULT_OPSET,
    dynamic: str = "all",
    example_size: tuple[int, int] = (64, 64),
    device: str = "cpu",
) -> dict[str, dict[str, Any]]:
    """Write the student of ``ckpt_path`` in each of ``formats``; reload and check TorchScript and ONNX files.

    Args:
        ckpt_path: training checkpoint (``.ckpt``) or exported ``student.pt``.
        out_path: output file or base name (see :func:`output_paths`).
        formats: any of ``FORMATS``.
        opset: ONNX opset version.
        dynamic: ONNX dynamic axes: ``all`` (batch, height, width), ``hw`` (height, width) or ``none``
            (fixed to the example shape).
        example_size: LR height and width of the example input the exports are made from.
        device: where the TorchScript file is reloaded and checked against the eager network (``cpu``,
            ``cuda``, ``cuda:<n>``, ``auto``). Files are always written from CPU weights; ONNX is checked
            with ONNX Runtime's CPU provider.

    Returns:
        ``{format: {"path", "max_abs_diff"}}``, ``max_abs_diff`` ``None`` for pt and for an ONNX file checked
        without onnxruntime; TorchScript and ONNX also give ``checked_on`` (the check input's shape) and ONNX
        its ``opset``.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"unknown export format(s) {unknown or formats}: choose from {', '.join(FORMATS)}")
    if dynamic not in DYNAMIC:
        raise ValueError(f"dynamic={dynamic!r}: choose one of {', '.join(DYNAMIC)}")
    net, config = exportable_student(ckpt_path)  # the checkpoint is read once, for every format
    paths = output_paths(out_path, list(formats))
    example, check = _inputs(example_size, dynamic)
    module = (SRForward(net) if isinstance(net, SRNet) else _PlainForward(net)).eval()
    target = resolve_device(device)
    with torch.no_grad():
        expected = net.eval()(check)
        # the eager reference on the device the TorchScript file is checked on (same kernels, e.g. TF32)
        on_target = (
            expected if target.type == "cpu" else copy.deepcopy(net).to(target)(check.to(target)).cpu()
        )
    done: dict[str, dict[str, Any]] = {}
    for fmt, path in paths.items():
        if fmt == "pt":
            done[fmt] = {"path": str(save_student(net, config, path)), "max_abs_diff": None}
        elif fmt == "torchscript":
            done[fmt] = write_torchscript(module, path, example, check, on_target, config, target)
        else:
            done[fmt] = write_onnx(module, path, example, check, expected, config, opset, DYNAMIC[dynamic])
    return done


def _inputs(example_size: tuple[int, int], dynamic: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The export example and the check input: another height, width (and batch) where those are dynamic."""
    height, width = (int(v) for v in example_size)
    if height < 2 or width < 2:
        raise ValueError(f"example size must be at least 2x2 pixels, got {height}x{width}")
    gen = torch.Generator().manual_seed(0)
    example = torch.rand(1, 3, height, width, generator=gen)
    if dynamic == "none":
        return example, torch.rand(1, 3, height, width, generator=gen)
    batch = 2 if dynamic == "all" else 1
    return example, torch.rand(batch, 3, height + 3, width + 5, generator=gen)


def _compare(name: str, path: Path, got: torch.Tensor, expected: torch.Tensor) -> float:
    if got.shape != expected.shape:
        raise ValueError(f"{name} {path}: output shape {tuple(got.shape)}, eager {tuple(expected.shape)}")
    diff = (got - expected).abs().max().item()
    if not diff <= CHECK_ATOL:
        raise ValueError(f"{name} {path}: output differs from the eager network by {diff:.3g} > {CHECK_ATOL}")
    return diff


def write_torchscript(
    module: nn.Module,
    path: Path,
    example: torch.Tensor,
    check: torch.Tensor,
    expected: torch.Tensor,
    config: dict[str, Any],
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Script (or trace) ``module``, save it with ``config.json`` as an extra file, reload and check it.

    The file is reloaded onto ``device`` (CPU by default) and run there on ``check``; ``expected`` is the
    eager output on that device.
    """
    device = device or torch.device("cpu")
    with torch.no_grad():
        compiled = (
            torch.jit.script(module) if isinstance(module, SRForward) else torch.jit.trace(module, example)
        )
    with atomic_path(path) as tmp:
        torch.jit.save(compiled, str(tmp), _extra_files={"config.json": json.dumps(config)})
        with torch.no_grad():
            loaded = torch.jit.load(str(tmp), map_location=device)
            diff = _compare("TorchScript", path, loaded(check.to(device)).cpu(), expected)
    return {"path": str(path), "max_abs_diff": diff, "checked_on": list(check.shape)}


def write_onnx(
    module: nn.Module,
    path: Path,
    example: torch.Tensor,
    check: torch.Tensor,
    expected: torch.Tensor,
    config: dict[str, Any],
    opset: int,
    axes: dict[int, str] | None,
) -> dict[str, Any]:
    """Export ``module`` to one ONNX file (input ``lq``, output ``sr``), reload and check it."""
    try:
        import onnx
    except ImportError as err:
        raise ValueError(
            "ONNX export needs onnx: pip install onnx onnxscript (in a checkout: pip install '.[onnx]')"
        ) from err
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.export internals, not actionable here
        torch.onnx.export(
            module,
            (example,),
            str(tmp),
            input_names=["lq"],
            output_names=["sr"],
            opset_version=opset,
            dynamic_shapes={"lq": axes} if axes else None,
            external_data=False,
            verbose=False,
        )
        model = onnx.load(str(tmp))
        written = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        if written != opset:
            raise ValueError(f"ONNX export gave opset {written}, not {opset}: try --opset {written}")
        onnx.helper.set_model_props(model, {"scale": str(config.get("scale")), "config": json.dumps(config)})
        onnx.checker.check_model(model)
        onnx.save(model, str(tmp))
        diff = _run_onnx(tmp, path, check, expected)
    return {"path": str(path), "max_abs_diff": diff, "checked_on": list(check.shape), "opset": opset}


def _run_onnx(tmp: Path, path: Path, check: torch.Tensor, expected: torch.Tensor) -> float | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    (out,) = session.run(["sr"], {"lq": check.numpy()})
    return _compare("ONNX", path, torch.from_numpy(out), expected)


KEYS = ("ckpt_path", "out", "formats", "opset", "dynamic", "example_size", "device")
USAGE = """meta-kd-sr-export ckpt_path=<.ckpt | student.pt> out=<file or base name>
    [formats=[pt,torchscript,onnx]] [opset=18] [dynamic=all|hw|none] [example_size=[64,64]] [device=cpu]

Writes the student alone: <base>.pt, <base>.torchscript.pt, <base>.onnx. TorchScript and ONNX files are
reloaded and checked against the eager network (TorchScript on `device`: cpu, cuda, auto). The older form
also works:
meta-kd-sr-export <ckpt> <out> [--formats pt onnx] [--opset 18] [--dynamic all] [--example-size 64 64]
[--device cpu]"""


def parse_args(argv: Sequence[str]) -> dict[str, Any]:
    """``key=value`` arguments (like the other commands), or the older positional form, as ``export`` kwargs.

    Raises:
        ValueError: an unknown key, a missing ``ckpt_path``/``out``, or a value of the wrong kind.
    """
    from omegaconf import OmegaConf

    if not any("=" in a and not a.startswith("-") for a in argv):
        return _legacy_args(argv)
    pairs = cast(dict[str, Any], OmegaConf.to_container(OmegaConf.from_dotlist(list(argv))))
    unknown = [k for k in pairs if k not in KEYS]
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)}: meta-kd-sr-export takes {', '.join(KEYS)}")
    missing = [k for k in ("ckpt_path", "out") if pairs.get(k) in (None, "")]
    if missing:
        example = "ckpt_path=<last.ckpt> out=exports/student"
        raise ValueError(f"{'= and '.join(missing)}= is required, e.g. {example}")
    formats = pairs.get("formats", ["pt"])
    size = pairs.get("example_size", [64, 64])
    if not isinstance(size, list) or len(size) != 2 or not all(isinstance(v, int) for v in size):
        raise ValueError(f"example_size={size!r}: expected two integers, e.g. example_size=[64,64]")
    opset = pairs.get("opset", DEFAULT_OPSET)
    if not isinstance(opset, int):
        raise ValueError(f"opset={opset!r}: expected an integer, e.g. opset={DEFAULT_OPSET}")
    return {
        "ckpt_path": str(pairs["ckpt_path"]),
        "out_path": str(pairs["out"]),
        "formats": [str(f) for f in (formats if isinstance(formats, list) else [formats])],
        "opset": opset,
        "dynamic": str(pairs.get("dynamic", "all")),
        "example_size": tuple(size),
        "device": str(pairs.get("device", "cpu")),
    }


def _legacy_args(argv: Sequence[str]) -> dict[str, Any]:
    """The older form: ``<ckpt> <out> [--formats ...] [--opset N] [--dynamic D] [--example-size H W]``."""
    parser = argparse.ArgumentParser(
        prog="meta-kd-sr-export", usage=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("ckpt_path")
    parser.add_argument("out_path")
    parser.add_argument("--formats", nargs="+", default=["pt"], choices=FORMATS)
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument("--dynamic", default="all", choices=list(DYNAMIC))
    parser.add_argument("--example-size", nargs=2, type=int, default=[64, 64], metavar=("H", "W"))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(list(argv))
    return {**vars(args), "example_size": tuple(args.example_size)}


def main(argv: list[str] | None = None) -> None:
    """Console entry point (``meta-kd-sr-export``): write the student alone, for deployment."""
    argv = sys.argv[1:] if argv is None else argv
    if argv in ([], ["-h"], ["--help"]):
        print(USAGE)
        raise SystemExit(0 if argv else 2)
    drop_exact_log(*TORCHVISION_NOTE)
    with one_line_errors("meta-kd-sr-export"):  # a setting, file or disk to fix: one line, exit status 2
        done = export(**parse_args(argv))
    for fmt, item in done.items():
        if fmt != "pt":
            print(_check_note(fmt, item["max_abs_diff"], item["checked_on"]))
    print(format_outputs((fmt, item["path"]) for fmt, item in done.items()), flush=True)


def _check_note(fmt: str, diff: float | None, shape: list[int]) -> str:
    if diff is None:
        return f"{fmt}: graph checked (install onnxruntime to also run it)"
    return f"{fmt}: reloaded and run on a {'x'.join(map(str, shape))} input, max |diff| vs eager {diff:.2g}"


if __name__ == "__main__":
    main()
