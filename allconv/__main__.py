"""`python -m allconv [PATTERN]`: the 12 networks with exact parameters, the paper's printed count,
forward MACs and the layer list, computed from the spec."""
import sys

from .specs import SPECS, list_models, macs, num_params, stages, Conv, Pool


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
    names = list_models(argv[0] if argv else "*")
    if not names:
        print(f"error: no model matches {argv[0]!r}; valid names: {', '.join(SPECS)}", file=sys.stderr)
        return 2
    print(f"{'model':<16}{'params':>11}{'paper':>8}{'MMACs':>9}{'error%':>8}  layers")
    for name in names:
        s = SPECS[name]
        print(f"{s.paper_name:<16}{num_params(name):>11,}{s.paper_params:>8}{macs(name) / 1e6:>9.1f}"
              f"{s.paper_error_pct:>8.2f}  {describe(name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
