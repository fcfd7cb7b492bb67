"""Downloads into the cache, from small HTTP servers on 127.0.0.1 that the tests start themselves.

Every way a download can fail or be interrupted gives one line naming the file and the reason, and
leaves nothing in the cache: no .part file, no lock file.
"""
import dataclasses
import errno
import fcntl
import gzip
import hashlib
import http.server
import json
import os
import queue
import resource
import signal
import subprocess
import sys
import threading

import pytest

from harness import datasets, downloads, idx_files, report
from harness.errors import DataError
from helpers import ROOT, idx_bytes, synthetic_arrays


class _Mirror(http.server.ThreadingHTTPServer):
    """Serves FILES[i].gz from memory; `mode` makes it misbehave.

    A paused download waits for `resume`, which the fixture sets as the test ends; `paused` is set
    when one waits.
    """

    def __init__(self, payloads, mode="good"):
        self.payloads, self.mode, self.requests = payloads, mode, []
        self.paused, self.resume = threading.Event(), threading.Event()
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/"

    def handle_error(self, request, client_address):
        """A client that hung up (a killed downloader) is no error of the server's."""


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    # http.server's naming.
    def do_GET(self):
        server, mode = self.server, self.server.mode
        server.requests.append(self.path)
        body = server.payloads.get(self.path.lstrip("/"))
        if mode == "redirect loop":
            self.send_response(302)
            self.send_header("Location", self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if mode in ("404", "500") or body is None:
            self.send_error(int(mode) if mode in ("404", "500") else 404)
            return
        if mode == "corrupt":
            body = gzip.compress(gzip.decompress(body)[:-1] + b"\1")
        elif mode == "html":
            body = b"<html><body>Please log in to this network</body></html>"
        elif mode == "empty":
            body = b""
        elif mode == "two members":
            raw = gzip.decompress(body)
            body = gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]) + b"\0" * 8
        self.send_response(200)
        self.send_header("Connection", "close")
        self._send(mode, body)

    def _send(self, mode, body):
        """The headers' end and the body, as mode sends them."""
        server, half = self.server, len(body) // 2
        if mode == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for start in range(0, len(body), 5000):
                piece = body[start:start + 5000]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
            return
        if mode == "huge":
            self.send_header("Content-Length", str(10 ** 9))
        elif mode not in ("no length", "dies without a length", "trickle"):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode in ("dies", "dies without a length"):
            self.wfile.write(body[:half])
        elif mode == "stall":
            self.wfile.write(body[:100])
            self.wfile.flush()
            server.resume.wait()
        elif mode == "trickle":
            for byte in range(len(body)):
                if server.resume.wait(0.01):
                    return
                self.wfile.write(body[byte:byte + 1])
                self.wfile.flush()
        elif mode in ("pause", "pause first") and not (mode == "pause first" and len(
                server.requests) > 1):
            self.wfile.write(body[:half])
            self.wfile.flush()
            server.paused.set()
            server.resume.wait()
            self.wfile.write(body[half:])
        elif mode != "huge":
            self.wfile.write(body)

    def log_message(self, *args):
        pass


class _Progress:
    """Records what a download shows: each update's (file, done, total, final), and any wait."""

    def __init__(self, stop_at=None):
        self.calls, self.waited, self.stop_at = [], threading.Event(), stop_at

    def waiting(self, folder):
        self.waited.set()

    def update(self, url, done, total, final):
        self.calls.append((url.rsplit("/", 1)[-1], done, total, final))
        if self.stop_at is not None and done >= self.stop_at:
            raise KeyboardInterrupt


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
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return server
    yield start
    for server in servers:
        server.resume.set()
        server.shutdown()
        server.server_close()


def _cache_files():
    """Every name in the MNIST cache folder, hidden ones too."""
    folder = idx_files.default_cache_dir()
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


_GZ_FILES = sorted(name + ".gz" for name in datasets.FILES)


def test_good_download_fills_the_cache_with_progress(payloads, serve):
    mirror, progress = serve(payloads), _Progress()
    train_x, train_y, test_x, test_y, _ = read_mnist(mirrors=(mirror.url,), progress=progress)
    assert train_x.shape == (300, 784) and len(test_y) == 50
    assert _cache_files() == _GZ_FILES
    for name in datasets.FILES:
        calls = [call[1:] for call in progress.calls if call[0] == name + ".gz"]
        size = len(payloads[name + ".gz"])
        assert calls[0] == (0, None, False) and calls[-1] == (size, size, True)
        assert all(total == size for _, total, _ in calls[1:])
    # Cached now: a second load asks the network for nothing.
    read_mnist(mirrors=(mirror.url,))
    assert len(mirror.requests) == 4


@pytest.mark.parametrize("mode", ["no length", "chunked"])
def test_a_server_that_gives_no_length_is_downloaded_and_its_progress_shown(payloads, serve,
                                                                             mode):
    mirror, progress = serve(payloads, mode), _Progress()
    assert len(read_mnist(mirrors=(mirror.url,), progress=progress)[0]) == 300
    assert _cache_files() == _GZ_FILES
    images = [call for call in progress.calls if call[0] == datasets.FILES[0] + ".gz"]
    size = len(payloads[datasets.FILES[0] + ".gz"])
    assert all(total is None for _, _, total, final in images if not final)
    assert images[-1] == (datasets.FILES[0] + ".gz", size, size, True) and len(images) > 2


def test_a_file_gzipped_in_several_members_with_padding_is_verified_as_gzip_reads_it(payloads,
                                                                                       serve):
    mirror = serve(payloads, "two members")
    assert len(read_mnist(mirrors=(mirror.url,))[0]) == 300
    assert _cache_files() == _GZ_FILES


def test_progress_shows_while_a_download_runs_not_only_when_it_ends(payloads, serve):
    mirror, lines = serve(payloads, "pause first"), queue.Queue()
    show = report.download_progress(lines.put, every=0)
    done = threading.Thread(target=read_mnist, kwargs=dict(mirrors=(mirror.url,), progress=show))
    done.start()
    # The server holds the first file at its half: what has come is shown before the rest comes.
    seen = [lines.get(timeout=60), lines.get(timeout=60)]
    assert mirror.paused.wait(60) and not mirror.resume.is_set()
    assert seen[0] == "downloading train-images-idx3-ubyte.gz from 127.0.0.1"
    assert seen[1].startswith("downloading train-images-idx3-ubyte.gz: ") and " of " in seen[1]
    mirror.resume.set()
    done.join(60)
    assert _cache_files() == _GZ_FILES


def test_progress_lines_come_at_most_every_ten_seconds_with_a_first_and_a_last():
    lines, now = [], [0.0]
    show = report.download_progress(lines.append, clock=lambda: now[0])
    url = ("http://apache-mxnet.s3-accelerate.dualstack.amazonaws.com/gluon/dataset/mnist/"
           "train-images-idx3-ubyte.gz")
    show.update(url, 0, None, False)
    for second in range(1, 36):
        now[0] = float(second)
        show.update(url, second * 100_000, None, False)
    show.update(url, 3_500_000, 3_500_000, True)
    show.waiting("/cache/mnist")
    show.update("http://127.0.0.1:8000/t10k-labels-idx1-ubyte.gz", 0, None, False)
    now[0] = 60.0
    show.update("http://127.0.0.1:8000/t10k-labels-idx1-ubyte.gz", 2_000, 10_008, False)
    assert lines == [
        "downloading train-images-idx3-ubyte.gz",
        "  from apache-mxnet.s3-accelerate.dualstack.amazonaws.com",
        "downloading train-images-idx3-ubyte.gz: 1.0 MB, 100 kB/s",
        "downloading train-images-idx3-ubyte.gz: 2.0 MB, 100 kB/s",
        "downloading train-images-idx3-ubyte.gz: 3.0 MB, 100 kB/s",
        "downloaded train-images-idx3-ubyte.gz: 3.5 MB, verified",
        "waiting for another process that is downloading into /cache/mnist",
        "downloading t10k-labels-idx1-ubyte.gz from 127.0.0.1",
        "downloading t10k-labels-idx1-ubyte.gz: 0.0 of 0.0 MB, 0 kB/s",
    ]
    assert report.download_progress(None) is None


def _failure(payloads, serve, mode, **monkeys):
    """The DataError's text of a download from a server in mode; asserts it left nothing."""
    mirror = serve(payloads, mode)
    with pytest.raises(DataError) as err:
        read_mnist(mirrors=(mirror.url,))
    message = str(err.value)
    assert "\n" not in message and message.startswith(
        f"could not download train-images-idx3-ubyte.gz from the mirror (last: {mirror.url}")
    assert _cache_files() == []
    return message


@pytest.mark.parametrize("mode, reason", [
    ("corrupt", "SHA-256 of the decompressed content is "),
    ("dies", "the connection closed after "),
    ("dies without a length", "the file served ends inside its gzip data"),
    ("html", "the file served is not gzip data"),
    ("empty", "the file served is empty"),
    ("404", "HTTP 404 Not Found"),
    ("500", "HTTP 500 Internal Server Error"),
    ("redirect loop", "HTTP 302: its redirects loop, or go on past 10"),
    ("huge", "the server offers 1,000,000,000 bytes, more than any file of these sets"),
])
def test_every_failure_of_a_download_is_one_true_line_and_leaves_nothing(payloads, serve, mode,
                                                                          reason):
    assert reason in _failure(payloads, serve, mode)


def test_a_server_that_stops_sending_times_out_in_one_line(payloads, serve, monkeypatch):
    monkeypatch.setattr(downloads, "TIMEOUT_S", 0.5)
    assert "train-images-idx3-ubyte.gz: no data for 0.5 s)" in _failure(payloads, serve, "stall")


def test_a_server_that_trickles_is_given_up_as_stalled(payloads, serve, monkeypatch):
    monkeypatch.setattr(downloads, "STALL_WINDOW_S", 0.2)
    monkeypatch.setattr(downloads, "STALL_MIN_BYTES", 10 ** 6)
    assert ": stalled: " in _failure(payloads, serve, "trickle")


def test_a_body_past_the_bound_is_refused_as_it_comes(payloads, serve, monkeypatch):
    monkeypatch.setattr(downloads, "MAX_DOWNLOAD", 1000)
    assert "more than 0 MB served" in _failure(payloads, serve, "no length")


def test_a_mirror_that_serves_another_data_set_says_which(payloads, serve, monkeypatch):
    other = dataclasses.replace(datasets.FASHION_MNIST, sha256=dict(datasets.MNIST.sha256))
    monkeypatch.setitem(datasets.DATASETS, "fashion-mnist", other)
    for name in datasets.FILES:
        monkeypatch.setitem(datasets.MNIST.sha256, name, "0" * 64)
    message = _failure(payloads, serve, "good")
    assert "the file served is fashion-mnist's train-images-idx3-ubyte, not mnist's" in message


def test_an_interrupted_download_leaves_nothing(payloads, serve):
    mirror = serve(payloads)
    with pytest.raises(KeyboardInterrupt):
        read_mnist(mirrors=(mirror.url,), progress=_Progress(stop_at=1))
    assert _cache_files() == []


def test_a_failing_mirror_falls_through_to_the_next_which_is_tried_first_after(payloads, serve):
    broken, good = serve(payloads, "dies"), serve(payloads)
    read_mnist(mirrors=(broken.url, good.url))
    assert len(broken.requests) == 1 and len(good.requests) == 4
    assert _cache_files() == _GZ_FILES


def test_no_network_names_the_files_the_folder_and_every_way_to_give_them(payloads):
    # Port 9 (discard) on loopback has no listener here: the connection is refused at once.
    with pytest.raises(DataError) as err:
        read_mnist(mirrors=("http://127.0.0.1:9/", "http://127.0.0.1:9/b/"))
    message = str(err.value)
    assert message.startswith(
        "could not download train-images-idx3-ubyte.gz from the 2 mirrors (last: "
        "http://127.0.0.1:9/b/train-images-idx3-ubyte.gz: Connection refused); 4 of the 4 data "
        f"files missing from {idx_files.default_cache_dir()} (the mnist cache): ")
    assert message.endswith("put them there (raw or .gz), name a folder that holds them with "
                            "--data-dir or MNIST_DIR, or set MNIST_MIRROR to a mirror that serves "
                            "them")
    assert "\n" not in message and all(name in message for name in datasets.FILES)
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
    assert _cache_files() == _GZ_FILES


@pytest.mark.parametrize("value", ["http://127.0.0.1:{port}",
                                   "http://127.0.0.1:{port}/{{dataset}}/"])
def test_mnist_mirror_is_the_only_place_downloaded_from(payloads, serve, monkeypatch, value):
    mirror = serve({"mnist/" + name if "dataset" in value else name: body
                    for name, body in payloads.items()})
    monkeypatch.setenv("MNIST_MIRROR", value.format(port=mirror.server_address[1]))
    assert downloads.sources(datasets.MNIST) == (
        mirror.url + ("mnist/" if "dataset" in value else ""),)
    assert len(read_mnist()[0]) == 300 and len(mirror.requests) == 4
    assert _cache_files() == _GZ_FILES


@pytest.mark.parametrize("value", ["ftp://example.org/mnist/", "example.org/mnist",
                                   "http:///mnist/", "https://example.org/get?file="])
def test_a_mirror_that_is_no_http_url_of_a_folder_is_refused_naming_the_variable(monkeypatch,
                                                                                  value):
    monkeypatch.setenv("MNIST_MIRROR", value)
    with pytest.raises(DataError) as err:
        read_mnist()
    assert str(err.value) == (f"MNIST_MIRROR={value!r} is not an http:// or https:// URL of a "
                              "folder, such as https://example.org/mnist/")


def test_a_part_file_a_killed_download_left_is_removed_and_nothing_else(payloads, serve):
    folder = idx_files.default_cache_dir()
    os.makedirs(folder)
    for name in datasets.FILES:
        with open(os.path.join(folder, name + ".gz"), "wb") as f:
            f.write(payloads[name + ".gz"])
    left = [".train-images-idx3-ubyte.k2j_x9aQ.part", ".t10k-labels-idx1-ubyte.00000000.part"]
    others = [".train-images-idx3-ubyte.part", "notes.part", ".other-file.k2j_x9aQ.part",
              ".train-images-idx3-ubyte.k2j_x9aQ.part.keep"]
    for name in left + others:
        with open(os.path.join(folder, name), "wb") as f:
            f.write(b"partial")
    mirror = serve(payloads)
    read_mnist(mirrors=(mirror.url,))
    assert _cache_files() == sorted(_GZ_FILES + others) and mirror.requests == []


def test_mnist_mirror_is_read_only_when_a_file_must_be_downloaded(payloads, serve, monkeypatch):
    read_mnist(mirrors=(serve(payloads).url,))
    monkeypatch.setenv("MNIST_MIRROR", "not a URL")
    assert len(read_mnist()[0]) == 300


def test_without_locks_a_download_goes_on_and_leaves_others_part_files_alone(payloads, serve,
                                                                            monkeypatch):
    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
    monkeypatch.setattr(fcntl, "flock", no_locks)
    folder = idx_files.default_cache_dir()
    os.makedirs(folder)
    part = ".train-images-idx3-ubyte.k2j_x9aQ.part"
    with open(os.path.join(folder, part), "wb") as f:
        f.write(b"another process's download, for all that can be known")
    assert len(read_mnist(mirrors=(serve(payloads).url,))[0]) == 300
    assert _cache_files() == sorted([*_GZ_FILES, part])


def test_a_second_downloader_waits_for_the_first_and_fetches_nothing_it_brought(payloads, serve):
    mirror = serve(payloads, "pause")
    first = threading.Thread(target=read_mnist, kwargs=dict(mirrors=(mirror.url,)))
    first.start()
    assert mirror.paused.wait(60)
    second_progress = _Progress()
    second = threading.Thread(target=read_mnist,
                              kwargs=dict(mirrors=(mirror.url,), progress=second_progress))
    second.start()
    # The second waits for the lock; the first's .part file is left alone meanwhile.
    assert second_progress.waited.wait(60)
    assert [name for name in _cache_files() if name.endswith(".part")]
    mirror.resume.set()
    first.join(60)
    second.join(60)
    assert len(mirror.requests) == 4 and second_progress.calls == []
    assert _cache_files() == _GZ_FILES


def test_a_full_disk_is_the_folders_fault_in_one_line_and_leaves_nothing(payloads, serve):
    # A file size limit makes the .part file's write fail with EFBIG, as a full disk fails it.
    mirror = serve(payloads)
    # The mirror twice: the second would be asked if the first were blamed.
    done = _downloader(mirror, payloads, limit=20_000, times=2)
    _, err = done.communicate(timeout=60)
    folder = idx_files.default_cache_dir()
    assert done.returncode == 1
    assert err == f"download: error: cannot download into {folder}: File too large\n"
    assert _cache_files() == [] and len(mirror.requests) == 1


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
    assert sorted(os.listdir(folder)) == _GZ_FILES
    assert "downloading train-images-idx3-ubyte.gz from 127.0.0.1" in lines
    assert "downloaded train-images-idx3-ubyte.gz: 0.2 MB, verified" in lines
    assert (tmp_path / "pics" / "confusion_matrix.png").stat().st_size > 2000
    # The MNIST cache was not touched.
    assert not os.path.exists(idx_files.default_cache_dir())


def _sibling(name, payloads, mirror, gz=False):
    """The registry's dataset name, its sums pointed at payloads' and its mirrors at mirror."""
    def digest(file):
        served = payloads[file + ".gz"]
        return hashlib.sha256(served if gz else gzip.decompress(served)).hexdigest()
    return dataclasses.replace(datasets.DATASETS[name], mirrors=(mirror.url,),
                               sha256={file: digest(file) for file in datasets.FILES})


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


# A process that downloads MNIST, its sums set to the served files', from one mirror, and prints
# what the trainer prints: a line per progress report on stdout, one line on stderr if it fails.
_DRIVER = """
import json, sys
sys.path.insert(0, sys.argv[1])
from harness import datasets, errors, idx_files, report
datasets.MNIST.sha256.update(json.loads(sys.argv[2]))
with errors.reported("download") as outcome:
    show = report.download_progress(lambda line: print(line, flush=True))
    idx_files.find(datasets.MNIST, mirrors=tuple(sys.argv[3].split(",")), progress=show)
    print("done", flush=True)
sys.exit(outcome.code)
"""


def _downloader(mirror, payloads, limit=None, times=1):
    """The _DRIVER process downloading from mirror (given times over), with a file size limit."""
    sums = {name: hashlib.sha256(gzip.decompress(payloads[name + ".gz"])).hexdigest()
            for name in datasets.FILES}

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return subprocess.Popen(
        [sys.executable, "-c", _DRIVER, ROOT, json.dumps(sums), ",".join([mirror.url] * times)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=limited if limit else None)


def _lines_of(process):
    """A queue that receives process's stdout lines as they come (None at its end)."""
    lines = queue.Queue()

    def pump():
        for line in process.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)
    threading.Thread(target=pump, daemon=True).start()
    return lines


def _wait_for(lines, text):
    """Take lines until one is text; fail if the process ends first."""
    while True:
        line = lines.get(timeout=60)
        assert line is not None, f"ended before {text!r}"
        if line == text:
            return


@pytest.mark.slow
def test_a_download_killed_mid_file_leaves_a_part_file_that_the_next_run_removes(payloads, serve):
    mirror = serve(payloads, "pause first")
    killed = _downloader(mirror, payloads)
    assert mirror.paused.wait(60)
    assert [name for name in _cache_files() if name.endswith(".part")]
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=60)
    left = _cache_files()
    assert [name for name in left if name.endswith(".part")] and ".download.lock" in left
    after = _downloader(mirror, payloads)
    out, err = after.communicate(timeout=60)
    assert after.returncode == 0 and err == "" and out.splitlines()[-1] == "done"
    assert _cache_files() == _GZ_FILES


@pytest.mark.slow
def test_a_waiting_downloader_takes_over_when_the_first_is_killed(payloads, serve):
    mirror = serve(payloads, "pause first")
    first = _downloader(mirror, payloads)
    assert mirror.paused.wait(60)
    second = _downloader(mirror, payloads)
    lines = _lines_of(second)
    _wait_for(lines, f"waiting for another process that is downloading into "
                     f"{idx_files.default_cache_dir()}")
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=60)
    _wait_for(lines, "done")
    second.wait(60)
    assert second.returncode == 0 and second.stderr.read() == ""
    assert _cache_files() == _GZ_FILES and len(mirror.requests) == 5


def _real_files(folder):
    """The four gzipped files of real MNIST in folder, by file name, as a mirror serves them."""
    served = {}
    for name in datasets.FILES:
        with open(os.path.join(folder, name + ".gz"), "rb") as f:
            served[name + ".gz"] = f.read()
    return served


@pytest.mark.slow
def test_the_trainer_downloads_real_mnist_from_mnist_mirror_showing_progress(real_mnist, serve,
                                                                             tmp_path):
    mirror = serve(_real_files(real_mnist), "chunked")
    env = dict(os.environ, MNIST_MIRROR=mirror.url, MXNET_HOME=str(tmp_path / "home"))
    done = subprocess.run([sys.executable, "train_mnist.py", "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stderr == ""
    lines = done.stdout.splitlines()
    for name in datasets.FILES:
        assert f"downloading {name}.gz from 127.0.0.1" in lines
        assert any(line.startswith(f"downloaded {name}.gz: ") and line.endswith(" MB, verified")
                   for line in lines)
    assert lines[-1].startswith("dry run: ")
    folder = tmp_path / "home" / "datasets" / "mnist"
    assert sorted(os.listdir(folder)) == _GZ_FILES


@pytest.mark.slow
def test_ctrl_c_mid_download_ends_the_trainer_in_one_line_and_leaves_nothing(real_mnist, serve,
                                                                             tmp_path):
    mirror = serve(_real_files(real_mnist), "pause first")
    home = tmp_path / "home"
    env = dict(os.environ, MNIST_MIRROR=mirror.url, MXNET_HOME=str(home))
    trainer = subprocess.Popen([sys.executable, "train_mnist.py"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert mirror.paused.wait(120)
    trainer.send_signal(signal.SIGINT)
    _, err = trainer.communicate(timeout=120)
    assert trainer.returncode == 130 and err.count("\n") == 1 and "Traceback" not in err, err
    assert os.listdir(home / "datasets" / "mnist") == []
