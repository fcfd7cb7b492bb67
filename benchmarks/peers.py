"""One benchmark peer per process: train the same MLP on MNIST and print one JSON line of figures."""
import argparse
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402

import data  # noqa: E402
import devices  # noqa: E402
import initializer  # noqa: E402
import loss  # noqa: E402
import network  # noqa: E402
import sync  # noqa: E402
import train_mnist  # noqa: E402

BATCH, LR, HIDDEN = 100, 0.1, (128, 64)


def _initial_params(seed):
    """The trainer's own Glorot init, as NDArrays in the symbol's argument order."""
    layout = devices.Layout(network.get_symbol("mlp", 10, HIDDEN), (784,))
    params = {name: mx.nd.zeros(layout.shapes[name]) for name in layout.names}
    initializer.glorot_uniform(params, np.random.RandomState(seed))
    return params


def _group(graph):
    """One CPU context bound for graph, plainly, with the trainer's initial weights."""
    symbol = network.get_symbol("mlp", 10, HIDDEN)
    group = devices.Group([mx.cpu()], devices.Layout(symbol, (784,)), sync.create("device", 1), lambda ctx: {},
                          lambda samples, train: graph)
    initializer.glorot_uniform(group.params, np.random.RandomState(0))
    return group


def peer_ours(data_dir, epochs, seed):
    config = train_mnist.Config(data_dir=data_dir, num_epochs=epochs, seed=seed)
    history = train_mnist.train(config)
    return [r["epoch_seconds"] for r in history], history[-1]["test_acc"], {"score_ms": _score_ms(data_dir)}


def _score_ms(data_dir, repeats=21):
    """Median time to score the whole test set through the trainer's own evaluate()."""
    arrays = data.load_mnist(data_dir, as_bytes=True)
    _, test_iter = data.mnist_iters(arrays, BATCH, [mx.cpu()], (784,), None)
    group = _group(loss.training_graph(network.get_symbol("mlp", 10, HIDDEN), "builtin"))
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        train_mnist.evaluate(group, test_iter)
        times.append(time.perf_counter() - tic)
    return 1000 * float(np.median(times))


def peer_startup(data_dir, epochs, seed):
    """Stop at the first training batch; run.py reads the wall-clock time this prints."""
    class FirstBatch(Exception):
        pass

    def stop_at_first_batch(*args, **kwargs):
        raise FirstBatch
    devices.Group.load = stop_at_first_batch
    try:
        train_mnist.train(train_mnist.Config(data_dir=data_dir, seed=seed))
    except FirstBatch:
        return [], None, {"first_batch_at": time.time()}
    raise RuntimeError("training never reached its first batch")


def peer_module(data_dir, epochs, seed):
    train_x, train_y, test_x, test_y = data.load_mnist(data_dir)
    np.random.seed(seed)  # NDArrayIter shuffles with numpy's global RNG
    train_iter = mx.io.NDArrayIter(train_x, train_y.astype(np.float32), BATCH, shuffle=True)
    module = mx.mod.Module(network.get_symbol("mlp", 10, HIDDEN), context=mx.cpu())
    stamps = []
    tic = [0.0]
    module.fit(train_iter, num_epoch=epochs, optimizer="sgd", optimizer_params={"learning_rate": LR},
               arg_params=_initial_params(seed), eval_metric="acc",
               batch_end_callback=lambda p: tic.__setitem__(0, tic[0] or time.perf_counter()),
               epoch_end_callback=lambda *a: stamps.append(time.perf_counter()))
    # fit() has no start-of-epoch hook: epoch 1 runs from its first batch, later ones from the previous end.
    seconds = np.diff([tic[0]] + stamps).tolist()
    test_iter = mx.io.NDArrayIter(test_x, test_y.astype(np.float32), 1000)
    return seconds, dict(module.score(test_iter, "acc"))["accuracy"], {}


def peer_gluon(data_dir, epochs, seed):
    from mxnet import autograd, gluon
    train_x, train_y, test_x, test_y = data.load_mnist(data_dir)
    net = gluon.nn.HybridSequential()
    for width in HIDDEN:
        net.add(gluon.nn.Dense(width, activation="relu"))
    net.add(gluon.nn.Dense(10))
    net.initialize()
    net(mx.nd.zeros((BATCH, 784)))
    for param, value in zip(net.collect_params().values(), _initial_params(seed).values()):
        param.set_data(value)
    net.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": LR})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    np.random.seed(seed)
    train_iter = mx.io.NDArrayIter(train_x, train_y.astype(np.float32), BATCH, shuffle=True)
    seconds = []
    for _ in range(epochs):
        tic = time.perf_counter()
        train_iter.reset()
        metric = mx.metric.Accuracy()
        for batch in train_iter:
            x, y = batch.data[0], batch.label[0]
            with autograd.record():
                out = net(x)
                loss = loss_fn(out, y)
            loss.backward()
            trainer.step(BATCH)
            metric.update([y], [out])
        metric.get()
        seconds.append(time.perf_counter() - tic)
    pred = net(mx.nd.array(test_x)).argmax(axis=1).asnumpy()
    return seconds, float(np.mean(pred == test_y)), {}


def peer_floor(data_dir, epochs, seed):
    train_x, train_y, _, _ = data.load_mnist(data_dir)
    group = _group(network.get_symbol("mlp", 10, HIDDEN))
    (exe,), _ = group.load(mx.io.DataBatch([mx.nd.array(train_x[:BATCH])], [mx.nd.array(train_y[:BATCH])], pad=0))
    for name, value in _initial_params(seed).items():
        exe.arg_dict[name][:] = value
    seconds = []
    for _ in range(epochs):
        tic = time.perf_counter()
        for _ in range(len(train_x) // BATCH):
            exe.forward(is_train=True)
            exe.backward()
        group.grads.flat.wait_to_read()
        seconds.append(time.perf_counter() - tic)
    return seconds, None, {}


def peer_torch(data_dir, epochs, seed):
    import torch
    torch.manual_seed(seed)
    train_x, train_y, test_x, test_y = (torch.from_numpy(a) for a in data.load_mnist(data_dir))
    train_y, test_y = train_y.long(), test_y.long()
    layers, width_in = [], 784
    for width in HIDDEN:
        layers += [torch.nn.Linear(width_in, width), torch.nn.ReLU()]
        width_in = width
    net = torch.nn.Sequential(*layers, torch.nn.Linear(width_in, 10))
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    values = list(_initial_params(seed).values())
    with torch.no_grad():
        for i, linear in enumerate(linears):
            linear.weight.copy_(torch.from_numpy(values[2 * i].asnumpy()))
            linear.bias.copy_(torch.from_numpy(values[2 * i + 1].asnumpy()))
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    generator = torch.Generator().manual_seed(seed)
    seconds = []
    for _ in range(epochs):
        tic = time.perf_counter()
        correct = torch.zeros((), dtype=torch.long)
        for idx in torch.randperm(len(train_x), generator=generator).split(BATCH):
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


PEERS = {"startup": peer_startup, "ours": peer_ours, "module": peer_module, "gluon": peer_gluon, "floor": peer_floor, "torch": peer_torch}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("peer", choices=sorted(PEERS))
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    seconds, test_acc, extra = PEERS[args.peer](args.data_dir, args.epochs, args.seed)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    print(json.dumps({"peer": args.peer, "epoch_seconds": seconds, "test_acc": test_acc,
                      "peak_rss_mb": peak_mb, **extra}))


if __name__ == "__main__":
    main()
