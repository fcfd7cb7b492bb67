"""One benchmark peer per process: train as that peer does, and print one JSON line of figures."""
#     python benchmarks/peers.py PEER --data-dir D [--network mlp|lenet] [--hidden 128,64]
#                                [--batch 100] [--epochs N] [--threads N]
#
# Every peer starts from the same Glorot weights (the trainer's own init, seed 42 unless --seed),
# trains with plain SGD at lr 0.1, and reports its seconds per epoch. MXNet's peers take their
# threads from the environment the runner gives them; PyTorch's from --threads; the GEMMs-only
# bound uses all cores.
import argparse
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")

from harness import compat

compat.install()

import numpy as np

LR = 0.1


def _mxnet():
    import mxnet as mx
    return mx


def _initial(network_name, hidden, seed):
    """The trainer's own Glorot init, name -> numpy array in the symbol's argument order."""
    import network
    import train_mnist
    mx = _mxnet()
    symbol = network.get_symbol(network_name, hidden)
    shapes = symbol.infer_shape(data=(1, *network.sample_shape(network_name)))[0]
    params = {name: mx.nd.zeros(shape) for name, shape in zip(symbol.list_arguments(), shapes)
              if name not in ("data", "softmax_label")}
    train_mnist.initialize(params, np.random.RandomState(seed))
    return {name: array.asnumpy() for name, array in params.items()}


def _arrays(data_dir, network_name):
    """(train images, train labels, test images, test labels): the floats the trainer sees."""
    import data
    import network
    from harness import datasets, idx_files
    paths = idx_files.find(datasets.DATASETS["mnist"], data_dir)
    train_x, train_y, test_x, test_y, _ = idx_files.read(paths)
    shape = (-1, *network.sample_shape(network_name))
    return (
        data.to_floats(train_x).reshape(shape),
        train_y.astype(np.float32),
        data.to_floats(test_x).reshape(shape),
        test_y.astype(np.float32),
    )


def peer_plain(args):
    """python train_mnist.py --no-fast: the update in MXNet's operators, as on a GPU."""
    return peer_ours(args, ["--no-fast"])


def peer_ours(args, extra=()):
    """python train_mnist.py, as a user runs it: the threads chosen by its own rule."""
    import tempfile

    import train_mnist
    with tempfile.TemporaryDirectory() as tmp:
        metrics = os.path.join(tmp, "metrics.jsonl")
        flags = ["--data-dir", args.data_dir, "--network", args.network, "--batch-size",
                 str(args.batch), "--num-epochs", str(args.epochs), "--seed", str(args.seed),
                 "--lr", str(LR), "--disp-batches", "0", "--metrics-file", metrics]
        flags += ["--num-hidden", ",".join(map(str, args.hidden))] if args.network == "mlp" else []
        flags += list(extra)
        if train_mnist.main(flags) != 0:
            raise RuntimeError("train_mnist.py failed")
        with open(metrics) as f:
            history = [json.loads(line) for line in f]
    # The training steps' time, as every other peer's: the test set's scoring is left out.
    return [r["train_seconds"] for r in history], history[-1]["test_acc"], {}


def peer_module(args):
    import network
    mx = _mxnet()
    train_x, train_y, test_x, test_y = _arrays(args.data_dir, args.network)
    # NDArrayIter shuffles with numpy's global RNG
    np.random.seed(args.seed)
    train_iter = mx.io.NDArrayIter(train_x, train_y, args.batch, shuffle=True)
    module = mx.mod.Module(network.get_symbol(args.network, args.hidden), context=mx.cpu())
    stamps, first = [], []
    module.fit(
        train_iter,
        num_epoch=args.epochs,
        optimizer="sgd",
        optimizer_params={"learning_rate": LR},
        arg_params={
            k: mx.nd.array(v) for k, v in _initial(args.network, args.hidden, args.seed).items()
        },
        eval_metric="acc",
        batch_end_callback=lambda p: first or first.append(time.perf_counter()),
        epoch_end_callback=lambda *a: stamps.append(time.perf_counter()),
    )
    # fit() has no start-of-epoch hook: epoch 1 runs from its first batch, later ones from the
    # previous end.
    seconds = np.diff(first + stamps).tolist()
    test_iter = mx.io.NDArrayIter(test_x, test_y, 1000)
    return seconds, dict(module.score(test_iter, "acc"))["accuracy"], {}


def _gluon_net(network_name, hidden):
    from mxnet import gluon
    net = gluon.nn.HybridSequential()
    if network_name == "mlp":
        for width in hidden:
            net.add(gluon.nn.Dense(width, activation="relu"))
    else:
        for filters in (20, 50):
            net.add(gluon.nn.Conv2D(filters, 5, activation="tanh"), gluon.nn.MaxPool2D(2, 2))
        net.add(gluon.nn.Flatten(), gluon.nn.Dense(500, activation="tanh"))
    net.add(gluon.nn.Dense(10))
    return net


def peer_gluon(args):
    from mxnet import autograd, gluon
    mx = _mxnet()
    train_x, train_y, test_x, test_y = _arrays(args.data_dir, args.network)
    net = _gluon_net(args.network, args.hidden)
    net.initialize()
    net(mx.nd.zeros((args.batch, *train_x.shape[1:])))
    for param, value in zip(
        net.collect_params().values(), _initial(args.network, args.hidden, args.seed).values()
    ):
        param.set_data(mx.nd.array(value))
    net.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": LR})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    np.random.seed(args.seed)
    train_iter = mx.io.NDArrayIter(train_x, train_y, args.batch, shuffle=True)
    seconds = []
    for _ in range(args.epochs):
        tic = time.perf_counter()
        train_iter.reset()
        metric = mx.metric.Accuracy()
        for batch in train_iter:
            x, y = batch.data[0], batch.label[0]
            with autograd.record():
                out = net(x)
                loss = loss_fn(out, y)
            loss.backward()
            trainer.step(args.batch)
            metric.update([y], [out])
        metric.get()
        seconds.append(time.perf_counter() - tic)
    pred = net(mx.nd.array(test_x)).argmax(axis=1).asnumpy()
    return seconds, float(np.mean(pred == test_y)), {}


def peer_floor(args):
    """MXNet's own forward and backward of the bound network, nothing else.

    No data movement, update, metric.
    """
    import network
    mx = _mxnet()
    symbol = network.get_symbol(args.network, args.hidden)
    grad_req = {
        name: "null" if name in ("data", "softmax_label") else "write"
        for name in symbol.list_arguments()
    }
    exe = symbol.simple_bind(
        mx.cpu(), grad_req=grad_req, data=(args.batch, *network.sample_shape(args.network))
    )
    for name, value in _initial(args.network, args.hidden, args.seed).items():
        exe.arg_dict[name][:] = value
    seconds = []
    for _ in range(args.epochs):
        tic = time.perf_counter()
        for _ in range(60000 // args.batch):
            exe.forward(is_train=True)
            exe.backward()
        mx.nd.waitall()
        seconds.append(time.perf_counter() - tic)
    return seconds, None, {}


def peer_update(args):
    """The trainer's update alone, as its default path runs it on a CPU: optimizer.SGD stepping
    each parameter by name, in numpy over NDArrays' memory."""
    import optimizer
    from harness import cpu, fast
    mx = _mxnet()
    # As the trainer runs: the gradients, scaled in place step after step, flush to zero rather
    # than take the slow path of subnormal floats.
    cpu.flush_denormals()
    owners = {name: (mx.nd.array(value), mx.nd.ones(value.shape) * -1e-3) for name, value in
              _initial(args.network, args.hidden, args.seed).items()}
    params = {name: fast.host_view(weight) for name, (weight, _) in owners.items()}
    grads = {name: fast.host_view(grad) for name, (_, grad) in owners.items()}
    opt = optimizer.SGD(LR)
    seconds = []
    for _ in range(args.epochs):
        mx.nd.waitall()
        tic = time.perf_counter()
        for _ in range(60000 // args.batch):
            opt.update(params, grads, rescale_grad=1.0 / args.batch)
        mx.nd.waitall()
        seconds.append(time.perf_counter() - tic)
    return seconds, None, {}


def peer_gemm(args):
    """The matrix products of an MLP step alone, with numpy's BLAS on every core.

    The GEMMs-only bound.
    """
    dims = (784, *args.hidden, 10)
    rng = np.random.RandomState(0)
    weights = [rng.rand(dims[i + 1], dims[i]).astype(np.float32) for i in range(len(dims) - 1)]
    acts = [rng.rand(args.batch, d).astype(np.float32) for d in dims]
    seconds = []
    for _ in range(args.epochs):
        tic = time.perf_counter()
        for _ in range(60000 // args.batch):
            for i, w in enumerate(weights):
                # forward
                acts[i] @ w.T
                # the weight's gradient
                acts[i + 1].T @ acts[i]
                if i:
                    # the gradient of the layer's input (not of the data)
                    acts[i + 1] @ w
        seconds.append(time.perf_counter() - tic)
    return seconds, None, {}


def peer_torch(args):
    import torch
    torch.set_num_threads(args.threads or os.cpu_count())
    torch.manual_seed(args.seed)
    train_x, train_y, test_x, test_y = (
        torch.from_numpy(a) for a in _arrays(args.data_dir, args.network)
    )
    train_y, test_y = train_y.long(), test_y.long()
    net = torch_network(args.network, args.hidden)
    learnable = [m for m in net if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    values = list(_initial(args.network, args.hidden, args.seed).values())
    with torch.no_grad():
        for i, layer in enumerate(learnable):
            layer.weight.copy_(torch.from_numpy(values[2 * i]))
            layer.bias.copy_(torch.from_numpy(values[2 * i + 1]))
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    generator = torch.Generator().manual_seed(args.seed)
    seconds = []
    for _ in range(args.epochs):
        tic = time.perf_counter()
        correct = torch.zeros((), dtype=torch.long)
        for idx in torch.randperm(len(train_x), generator=generator).split(args.batch):
            x, y = train_x[idx], train_y[idx]
            out = net(x)
            loss = torch.nn.functional.cross_entropy(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            correct += (out.argmax(1) == y).sum()
        correct.item()
        seconds.append(time.perf_counter() - tic)
    with torch.no_grad():
        acc = (net(test_x).argmax(1) == test_y).float().mean().item()
    return seconds, acc, {"torch_threads": torch.get_num_threads()}


def torch_network(network_name, hidden):
    """The same network in PyTorch."""
    import torch
    if network_name == "mlp":
        layers, width_in = [], 784
        for width in hidden:
            layers += [torch.nn.Linear(width_in, width), torch.nn.ReLU()]
            width_in = width
        return torch.nn.Sequential(*layers, torch.nn.Linear(width_in, 10))
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 20, 5), torch.nn.Tanh(), torch.nn.MaxPool2d(2, 2),
        torch.nn.Conv2d(20, 50, 5), torch.nn.Tanh(), torch.nn.MaxPool2d(2, 2),
        torch.nn.Flatten(), torch.nn.Linear(800, 500), torch.nn.Tanh(), torch.nn.Linear(500, 10))


PEERS = {
    "ours": peer_ours,
    "plain": peer_plain,
    "module": peer_module,
    "gluon": peer_gluon,
    "floor": peer_floor,
    "gemm": peer_gemm,
    "update": peer_update,
    "torch": peer_torch,
}


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("peer", choices=sorted(PEERS))
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--network", default="mlp", choices=("mlp", "lenet"))
    parser.add_argument(
        "--hidden", default=(128, 64), type=lambda text: tuple(int(w) for w in text.split(","))
    )
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=0, help="PyTorch's threads; 0: all cores")
    args = parser.parse_args()
    seconds, test_acc, extra = PEERS[args.peer](args)
    # Linux reports KiB
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "peer": args.peer,
                "epoch_seconds": seconds,
                "test_acc": test_acc,
                "peak_rss_mb": peak_mb,
                **extra,
            }
        )
    )


if __name__ == "__main__":
    main()
