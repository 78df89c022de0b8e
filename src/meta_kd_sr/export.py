"""Export the student alone, and rebuild networks from the configs saved with them.

An exported file is ``{"state_dict": <student weights>, "config": {"_target_": ..., **kwargs}}``: it loads
into the plain architecture with no distillation code (no teacher, adapters or KRNets).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from meta_kd_sr.models.convert import load_pretrained, read_checkpoint


def build_from_config(config: Mapping[str, Any]) -> nn.Module:
    """Instantiate ``config["_target_"](**kwargs)`` (a network config saved by training)."""
    if "_target_" not in config:
        raise ValueError(f"network config has no '_target_' entry: {dict(config)}")
    module_name, _, attr = str(config["_target_"]).rpartition(".")
    cls = getattr(importlib.import_module(module_name), attr)
    kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
    return cls(**kwargs)


def student_from_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the student from a training checkpoint or an exported file.

    Returns:
        The network (eval mode) and its config.
    """
    ckpt = read_checkpoint(path)
    config = ckpt.get("config") or (ckpt.get("hyper_parameters") or {}).get("student_config")
    if not config:
        raise ValueError(
            f"{path} carries no network config; evaluate it with an explicit architecture (model=<preset>)"
        )
    net = build_from_config(config)
    load_pretrained(net, ckpt, fmt="ours")
    return net.eval(), dict(config)


def export_student(ckpt_path: str | Path, out_path: str | Path) -> Path:
    """Write the student of a training checkpoint alone: weights and the config that rebuilds it."""
    net, config = student_from_checkpoint(ckpt_path)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": net.state_dict(), "config": config}, out_path)
    return out_path


def main(argv: list[str] | None = None) -> None:
    """``meta-kd-sr-export <training checkpoint> <out.pt>``: write the student alone."""
    import argparse

    parser = argparse.ArgumentParser(prog="meta-kd-sr-export", description=main.__doc__)
    parser.add_argument("ckpt_path", help="training checkpoint (.ckpt) written by meta-kd-sr-train")
    parser.add_argument("out_path", help="output file (.pt): {'state_dict', 'config'}")
    args = parser.parse_args(argv)
    print(export_student(args.ckpt_path, args.out_path))


if __name__ == "__main__":
    main()
