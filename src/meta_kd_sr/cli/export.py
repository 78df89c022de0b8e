"""``meta-kd-sr-export <training checkpoint> <out.pt>``: write the student alone.

Reading, rebuilding and exporting live in :mod:`meta_kd_sr.models.checkpoint`.
"""

from __future__ import annotations

import argparse

from meta_kd_sr.models.checkpoint import export_student


def main(argv: list[str] | None = None) -> None:
    """``meta-kd-sr-export <training checkpoint> <out.pt>``: write the student alone."""
    parser = argparse.ArgumentParser(prog="meta-kd-sr-export", description=main.__doc__)
    parser.add_argument("ckpt_path", help="training checkpoint (.ckpt) written by meta-kd-sr-train")
    parser.add_argument("out_path", help="output file (.pt): {'state_dict', 'config'}")
    args = parser.parse_args(argv)
    try:
        out = export_student(args.ckpt_path, args.out_path)
    except (FileNotFoundError, ValueError, FloatingPointError) as err:
        parser.exit(1, f"{parser.prog}: error: {err}\n")
    print(out)


if __name__ == "__main__":
    main()
