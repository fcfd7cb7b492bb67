"""The checkpoint that --evaluate, --export-onnx and --predict read: its own network, bound.

A checkpoint says what it holds. Its symbol file is the network, and resolve() finds which of the
lesson's networks it is, with its widths, so that no flag that trained it needs repeating; a
--network or --num-hidden given that contradicts it is refused, naming what it holds. bind() binds
that network on the run's devices and copies the checkpoint's weights in, each checked for its
name, shape, dtype, storage and finiteness, whoever saved it: this trainer, or MXNet's Module.
"""
import dataclasses
import json

from harness import checkpoint
from harness.errors import CheckpointError, ConfigError

# The config fields that say which network a checkpoint holds.
_NETWORK_FIELDS = ("network", "num_hidden")


def resolve(run, network, given=None):
    """Make run.config's network and widths those of the plan's checkpoint; return its symbol.

    network: the lesson's network module (its registry, its builders). given: the config fields
    that the command line gave; each that says which network must agree with the checkpoint
    (None: the fields whose values differ from their defaults).
    """
    config, tag = run.config, run.plan.tag
    prefix = config.model_prefix
    path = checkpoint.shared_paths(prefix)["symbol"]
    text = checkpoint.read_symbol(prefix)
    if text is None:
        raise CheckpointError(f"{path} cannot be read: without it, which network "
                              f"{tag.stem(prefix)} holds is not known")
    held = _held(text, network, config)
    if held is None:
        raise CheckpointError(f"{path} holds a network that this trainer does not build (not one "
                              f"of network.py's {', '.join(network.NETWORKS)} at any widths)")
    defaults = {field.name: field.default for field in dataclasses.fields(config)}
    given = [name for name in _NETWORK_FIELDS
             if (name in given if given is not None else getattr(config, name) != defaults[name])]
    for name in given:
        if getattr(config, name) != held[name]:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(
                f"{flag} {_typed(getattr(config, name))} contradicts checkpoint "
                f"{tag.stem(prefix)}, which holds {_describe(held, network)}: leave {flag} out"
            )
    try:
        run.config = dataclasses.replace(config, **held)
    except ConfigError as err:
        raise CheckpointError(f"{path} holds {_describe(held, network)}, which this trainer "
                              f"cannot train: {err}") from None
    if (config.network, config.num_hidden) != (run.config.network, run.config.num_hidden):
        run.log(f"checkpoint {tag.stem(prefix)} holds {_describe(held, network)}")
    return network.get_symbol(run.config.network, run.config.num_hidden)


def _held(text, network, config):
    """{'network', 'num_hidden'} of the registry's network whose symbol is text, or None.

    A network's widths are those of its hidden FullyConnected layers, or, for a network that does
    not take widths (LeNet), the default ones.
    """
    import mxnet as mx
    try:
        ours = mx.sym.load_json(text.decode()).tojson()
        nodes = json.loads(ours)["nodes"]
    except (mx.base.MXNetError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return None
    default = next(f.default for f in dataclasses.fields(config) if f.name == "num_hidden")
    try:
        widths = tuple(int(node["attrs"]["num_hidden"]) for node in nodes
                       if node.get("op") == "FullyConnected")[:-1]
    except (KeyError, TypeError, ValueError):
        widths = ()
    for name in network.NETWORKS:
        for candidate in dict.fromkeys((default, widths)):
            if candidate and network.get_symbol(name, candidate).tojson() == ours:
                return {"network": name, "num_hidden": candidate}
    return None


def _describe(held, network):
    """'--network mlp --num-hidden 32,16', or '--network lenet' for a network without widths."""
    name, widths = held["network"], held["num_hidden"]
    wider = tuple(width + 1 for width in widths)
    takes_widths = network.get_symbol(name, widths).tojson() != \
        network.get_symbol(name, wider).tojson()
    return f"--network {name}" + (f" --num-hidden {_typed(widths)}" if takes_widths else "")


def _typed(value):
    """A value as the command line takes it: 32,16 for a tuple."""
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def bind(run, iterator, network, symbol):
    """The Model of symbol on run's devices, sized for iterator, with the checkpoint's weights.

    network: the lesson's network module, whose training graph is bound (its second output scores
    a batch).
    """
    from harness import devices
    prefix, plan = run.config.model_prefix, run.plan
    graph = network.training_graph(symbol, run.config.gradient)
    model = devices.bound(graph, run, (None, iterator))
    if plan.foreign:
        run.log(f"{plan.tag.stem(prefix)} is MXNet's own checkpoint: its weights alone, checked "
                "by name, shape, dtype and value")
    weights = checkpoint.load_weights(checkpoint.paths(prefix, plan.tag)["params"],
                                      model.layout.shapes)
    for name, array in model.arg_params.items():
        array[:] = weights[name]
    return model
