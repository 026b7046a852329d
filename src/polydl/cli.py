"""The ``polydl`` command line: ``polydl show``, ``polydl tune`` and ``polydl partition``."""

from __future__ import annotations

import argparse
import sys


def _add_show(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("show", help="print a kernel's loops, LLVM IR or assembly")
    p.add_argument("kernel", help="FILE.py:KERNEL, a DSL kernel defined in a Python file")
    p.add_argument("--sizes", default="", help="size bindings, e.g. M=64,N=64,K=64")
    p.add_argument("--emit", default="loops", help="loops | variants | schedule | llvm | asm")
    p.add_argument("--target", default=None, help="LLVM CPU name (default: host)")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=_run_show)


def _parse_sizes(text: str) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not value.strip().lstrip("-").isdigit():
            raise SystemExit(f"polydl show: --sizes expects NAME=INT pairs, got {item!r}")
        sizes[name.strip()] = int(value)
    return sizes


def _load_kernel(spec: str):
    import importlib.util
    from pathlib import Path

    path, sep, name = spec.rpartition(":")
    if not sep or not path:
        raise SystemExit(f"polydl show: expected FILE.py:KERNEL, got {spec!r}")
    file = Path(path)
    if not file.is_file():
        raise SystemExit(f"polydl show: no such file {path!r}")
    mod_spec = importlib.util.spec_from_file_location(file.stem, file)
    module = importlib.util.module_from_spec(mod_spec)
    sys.path.insert(0, str(file.parent.resolve()))
    try:
        mod_spec.loader.exec_module(module)
    finally:
        sys.path.pop(0)
    if not hasattr(module, name):
        raise SystemExit(f"polydl show: {path} defines no {name!r}")
    return getattr(module, name)


def _run_show(args: argparse.Namespace) -> int:
    import polydl as pd

    kern = _load_kernel(args.kernel)
    compiled = pd.compile(
        kern, threads=args.threads, target=args.target, **_parse_sizes(args.sizes)
    )
    print(compiled.show(args.emit))
    return 0


def main(argv: list[str] | None = None) -> int:
    from .errors import PolyDLError

    parser = argparse.ArgumentParser(prog="polydl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_show(sub)
    from .tune.command import add_parser as _add_tune

    _add_tune(sub)
    try:
        from .partition.command import add_parser as _add_partition
    except ImportError:  # the partitioner is optional at import time
        _add_partition = None
    if _add_partition is not None:
        _add_partition(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PolyDLError as e:
        print(f"polydl {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
