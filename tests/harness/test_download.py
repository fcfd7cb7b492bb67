"""Downloads into the cache, from a small HTTP server on 127.0.0.1 that the test starts itself."""
import dataclasses
import gzip
import hashlib
import http.server
import os
import threading

import pytest

from harness import datasets, idx_files
from harness.errors import DataError
from helpers import idx_bytes, synthetic_arrays


class _Mirror(http.server.ThreadingHTTPServer):
    """Serves FILES[i].gz from memory; `mode` makes it misbehave."""

    def __init__(self, payloads, mode="good"):
        self.payloads, self.mode, self.requests = payloads, mode, []
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/"


class _Handler(http.server.BaseHTTPRequestHandler):
    # http.server's naming.
    def do_GET(self):
        server = self.server
        server.requests.append(self.path)
        body = server.payloads.get(self.path.lstrip("/"))
        if body is None:
            self.send_error(404)
            return
        if server.mode == "corrupt":
            body = gzip.compress(gzip.decompress(body)[:-1] + b"\1")
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        # "dies" promises the whole file, sends half, and hangs up.
        self.wfile.write(body[: len(body) // 2] if server.mode == "dies" else body)

    def log_message(self, *args):
        pass


@pytest.fixture
def payloads(monkeypatch):
    """Gzipped synthetic files, with MNIST's SHA-256 sums pointed at theirs."""
    served = {}
    for name, array in zip(datasets.FILES, synthetic_arrays(num_train=300, num_test=50)):
        raw = idx_bytes(array)
        served[name + ".gz"] = gzip.compress(raw)
        monkeypatch.setitem(datasets.MNIST.sha256, name, hashlib.sha256(raw).hexdigest())
    return served


def read_mnist(**kwargs):
    return idx_files.read(idx_files.find(datasets.MNIST, **kwargs))


@pytest.fixture
def serve():
    servers = []

    def start(payloads, mode="good"):
        server = _Mirror(payloads, mode)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _cache_files():
    folder = idx_files.default_cache_dir()
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def test_good_download_fills_the_cache_with_progress(payloads, serve):
    mirror = serve(payloads)
    seen = []
    train_x, train_y, test_x, test_y, _ = read_mnist(
        mirrors=(mirror.url,), progress=lambda *a: seen.append(a)
    )
    assert train_x.shape == (300, 784) and len(test_y) == 50
    assert _cache_files() == sorted(name + ".gz" for name in datasets.FILES)
    last = {name: (done, total) for name, done, total in seen}
    assert set(last) == set(datasets.FILES) and all(
        done == total > 0 for done, total in last.values()
    )
    # Cached now: a second load asks the network for nothing.
    read_mnist(mirrors=(mirror.url,))
    assert len(mirror.requests) == 4


def test_checksum_mismatch_is_rejected_and_leaves_nothing(payloads, serve):
    mirror = serve(payloads, "corrupt")
    with pytest.raises(DataError, match="SHA-256"):
        read_mnist(mirrors=(mirror.url,))
    assert _cache_files() == []


def test_server_dying_mid_file_leaves_nothing(payloads, serve):
    mirror = serve(payloads, "dies")
    with pytest.raises(DataError, match="could not download") as err:
        read_mnist(mirrors=(mirror.url,))
    assert "\n" not in str(err.value)
    assert _cache_files() == []


def test_a_failing_mirror_falls_through_to_the_next(payloads, serve):
    broken, good = serve(payloads, "dies"), serve(payloads)
    read_mnist(mirrors=(broken.url, good.url))
    assert len(broken.requests) == 4 and len(good.requests) == 4
    assert len(_cache_files()) == 4


def test_no_network_names_the_files_and_the_folder(payloads):
    # Port 9 (discard) on loopback has no listener here: the connection is refused at once.
    with pytest.raises(DataError) as err:
        read_mnist(mirrors=("http://127.0.0.1:9/",))
    message = str(err.value)
    assert idx_files.default_cache_dir() in message and "\n" not in message
    assert all(name in message for name in datasets.FILES)
    assert _cache_files() == []


def test_only_missing_files_are_fetched(payloads, serve):
    folder = idx_files.default_cache_dir()
    os.makedirs(folder)
    with open(os.path.join(folder, datasets.FILES[1] + ".gz"), "wb") as f:
        f.write(payloads[datasets.FILES[1] + ".gz"])
    mirror = serve(payloads)
    read_mnist(mirrors=(mirror.url,))
    assert sorted(mirror.requests) == sorted(
        "/" + n + ".gz" for n in datasets.FILES if n != datasets.FILES[1]
    )
    assert len(_cache_files()) == 4


def _sibling(name, payloads, mirror, gz=False):
    """The registry's dataset name, its sums pointed at payloads' and its mirrors at mirror."""
    def digest(file):
        served = payloads[file + ".gz"]
        return hashlib.sha256(served if gz else gzip.decompress(served)).hexdigest()
    return dataclasses.replace(datasets.DATASETS[name], mirrors=(mirror.url,),
                               sha256={file: digest(file) for file in datasets.FILES})


def test_fashion_mnist_downloads_into_its_own_cache_and_trains_with_its_class_names(payloads, serve,
                                                                                      monkeypatch,
                                                                                      tmp_path):
    import train_mnist
    from helpers import config
    mirror = serve(payloads)
    monkeypatch.setitem(
        datasets.DATASETS, "fashion-mnist", _sibling("fashion-mnist", payloads, mirror)
    )
    lines = []
    history = train_mnist.train(config(dataset="fashion-mnist", num_epochs=2, batch_size=20,
                                       plot_dir=str(tmp_path / "pics")), log=lines.append)
    assert len(history) == 2 and history[-1]["test_acc"] > 0.5
    folder = idx_files.default_cache_dir(datasets.DATASETS["fashion-mnist"])
    assert folder.endswith(os.path.join("datasets", "fashion-mnist"))
    assert sorted(os.listdir(folder)) == sorted(name + ".gz" for name in datasets.FILES)
    assert any(line.startswith("downloading train-images-idx3-ubyte.gz") for line in lines)
    assert (tmp_path / "pics" / "confusion_matrix.png").stat().st_size > 2000
    # The MNIST cache was not touched.
    assert not os.path.exists(idx_files.default_cache_dir())


def test_a_dataset_published_with_sums_of_its_gz_files_is_verified_by_them(
    payloads, serve, monkeypatch
):
    good = serve(payloads)
    kmnist = _sibling("kmnist", payloads, good, gz=True)
    monkeypatch.setitem(datasets.DATASETS, "kmnist", kmnist)
    assert kmnist.gz and len(idx_files.read(idx_files.find(kmnist))[0]) == 300
    # A served file whose content differs is refused, and nothing is left in the cache.
    other = dataclasses.replace(
        kmnist, folder="kmnist-other", mirrors=(serve(payloads, "corrupt").url,)
    )
    with pytest.raises(DataError, match="SHA-256 of the .gz file is"):
        idx_files.find(other)
    assert os.listdir(idx_files.default_cache_dir(other)) == []


def test_the_siblings_are_registered_with_their_classes():
    assert datasets.DATASETS["fashion-mnist"].classes[9] == "Ankle boot"
    assert datasets.DATASETS["kmnist"].classes[:2] == ("o", "ki")
    assert all(len(d.classes) == datasets.NUM_CLASSES and len(d.sha256) == 4
               for d in datasets.DATASETS.values())
