"""`flowc example NAME`: write a built-in example model as a torch.export program."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def register(subparsers, add_debug: Callable[[argparse.ArgumentParser], None]) -> None:
    p = subparsers.add_parser("example", help="write a built-in example model (torch.export .pt2)")
    p.add_argument("name", choices=["mlp", "block"],
                   help="mlp: 784-512-256-10 ReLU MLP; block: LayerNorm, GELU MLP, gated "
                   "projection and softmax head (no attention)")
    p.add_argument("-o", "--output", help="output file (default: NAME.pt2 here)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    add_debug(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flowc.cli.paths import check_output
    from flowc.studies.examples import save_example

    out = args.output or f"{args.name}.pt2"
    check_output(out, "-o")
    save_example(args.name, out, seed=args.seed)
    print(f"wrote {out} (torch.export program of the built-in example '{args.name}')")
    return 0
