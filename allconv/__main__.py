"""`python -m allconv [PATTERN ...]`: the 12 networks (and any of one's own) with exact parameters, the paper's
printed count, forward MACs and the layer list, computed from the spec."""
import argparse
import sys

from .specs import SPECS, macs, num_params, resolve_models, stages, Conv, Pool


def describe(name: str) -> str:
    parts = []
    for layers in stages(name).values():
        for layer in layers:
            if isinstance(layer, Pool):
                parts.append("pool3/2")
            elif isinstance(layer, Conv):
                parts.append(f"{layer.kernel}x{layer.kernel}x{layer.out}" + ("/2" if layer.stride == 2 else ""))
    return " ".join(parts) + " gap"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m allconv", description="The 12 networks of Table 3 (then any of one's "
                                "own): exact and printed parameter counts, forward MACs, layers.")
    p.add_argument("patterns", nargs="*", default=["*"], metavar="PATTERN",
                   help="API names or fnmatch patterns ('*-c', 'model-*,allcnn-c'), as run_all and throughput "
                        "--models take them (default: all: Table 3's 12, then any network of one's own)")
    try:
        names = resolve_models(p.parse_args(argv).patterns)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{'model':<16}{'params':>11}{'paper':>8}{'MMACs':>9}{'error%':>8}  layers")
    for name in names:
        s = SPECS[name]
        error = f"{s.paper_error_pct:.2f}" if s.in_paper else "-"  # a network of one's own: no paper number
        print(f"{s.paper_name:<16}{num_params(name):>11,}{s.paper_params or '-':>8}{macs(name) / 1e6:>9.1f}"
              f"{error:>8}  {describe(name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
