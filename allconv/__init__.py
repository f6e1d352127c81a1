"""The 12 networks of Table 3 (Springenberg et al., 2015), declared as data and built by one function (a network
of one's own is one more entry of `allconv.specs.SPECS`).

    import allconv
    allconv.VARIANTS                # {"model-a": "Model A", ..., "allcnn-c": "All-CNN-C"}, Table 3 order
    net = allconv.build("allcnn-c") # nn.Sequential; bn=, dropout=, final_relu=, init= switches
    allconv.macs("allcnn-c")        # forward multiply-accumulates per 32x32 image

`allconv.specs` holds the tables and imports no torch; `python -m allconv` prints them.
"""
from .specs import (DEFAULT_INIT, INITS, PAPER_MODELS, SPECS, VARIANTS, ModelSpec, get_spec, list_models, macs,
                    num_params, resolve_models)


def __getattr__(attr):  # torch is imported only when a network is built
    if attr in ("build", "init_weights"):
        from . import network  # a module named "build" would shadow the function of that name

        return getattr(network, attr)
    raise AttributeError(f"module 'allconv' has no attribute {attr!r}")


__all__ = ["DEFAULT_INIT", "INITS", "PAPER_MODELS", "SPECS", "VARIANTS", "ModelSpec", "build", "get_spec",
           "list_models", "macs", "num_params", "resolve_models"]
