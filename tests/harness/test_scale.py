"""Several devices in one process, and dist_sync workers launched by harness.launch."""
# On this machine: as local processes, and over ssh.
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from helpers import ROOT, assert_params_close, config, saved_params

import train_mnist

LAUNCH = [sys.executable, os.path.join(ROOT, "harness", "launch.py")]
TRAIN = [sys.executable, os.path.join(ROOT, "train_mnist.py")]


@pytest.mark.parametrize(
    "cpus, settings", [(2, {}), (3, {"mom": 0.9}), (2, {"optimizer": "adam", "lr": 0.001})]
)
def test_several_contexts_train_like_one_with_the_same_global_batch(
    synthetic_dir, tmp_path, cpus, settings
):
    # 1050 samples in batches of 64: 16 full batches split unevenly (e.g. 22/21/21) and a tail of
    # 26.
    common = dict(batch_size=64, **settings)
    one = train_mnist.train(config(synthetic_dir, model_prefix=str(tmp_path / "one"), **common))
    many = train_mnist.train(
        config(synthetic_dir, model_prefix=str(tmp_path / "many"), cpus=cpus, **common)
    )
    # After one epoch's 17 steps, and after 51.
    for epoch in (1, 3):
        assert_params_close(
            saved_params(tmp_path / "one", epoch), saved_params(tmp_path / "many", epoch)
        )
    for a, b in zip(one, many):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["test_acc"] == pytest.approx(b["test_acc"], abs=1e-9)


def test_more_devices_than_samples_in_a_batch_is_refused(synthetic_dir, capsys):
    code = train_mnist.main(["--data-dir", synthetic_dir, "--cpus", "3", "--batch-size", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "leaves a batch of 2 samples for 3 devices" in err and err.count("\n") == 1


FLAGS = [
    "--num-epochs",
    "3",
    "--batch-size",
    "64",
    "--num-hidden",
    "32,16",
    "--mom",
    "0.9",
    "--disp-batches",
    "0",
    "--plot-dir",
    "none",
]


def _single(synthetic_dir, tmp_path):
    single = subprocess.run(
        TRAIN + ["--data-dir", synthetic_dir, *FLAGS, "--model-prefix", str(tmp_path / "single")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert single.returncode == 0, single.stderr
    return single


def _same_as_single(single, dist, tmp_path):
    # The job ended by itself, past the last epoch: no worker hung waiting for another.
    assert dist.returncode == 0, dist.stderr
    # Rank 0 alone reports.
    assert dist.stdout.count("final test accuracy") == 1
    for epoch in (1, 3):
        assert_params_close(
            saved_params(tmp_path / "single", epoch), saved_params(tmp_path / "dist", epoch)
        )
    # Over ssh -tt the workers write to a terminal: each line comes with the codes that draw over
    # the bar.
    lines = [
        line.replace("\033[K", "").strip() for line in dist.stdout.replace("\r", "\n").splitlines()
    ]
    lines = [line for line in lines if line.startswith("epoch ")]
    assert [line.split()[:8] for line in lines] == [
        line.split()[:8] for line in single.stdout.splitlines() if line.startswith("epoch ")]


def _job_processes():
    """The pids of this machine that belong to a launched job (they carry DMLC_ROLE)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if any(item.startswith(b"DMLC_ROLE=") for item in f.read().split(b"\0")):
                    found.append(int(entry))
        except (OSError, ValueError):
            continue
    return found


def test_two_workers_one_server_train_like_one_process(synthetic_dir, tmp_path):
    single = _single(synthetic_dir, tmp_path)
    dist = subprocess.run(
        LAUNCH
        + ["-n", "2", "-s", "1", "--timeout", "150", "--"]
        + TRAIN
        + [
            "--data-dir",
            synthetic_dir,
            *FLAGS,
            "--kv-store",
            "dist_sync",
            "--model-prefix",
            str(tmp_path / "dist"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    _same_as_single(single, dist, tmp_path)
    assert not _job_processes()


@pytest.fixture
def sshd(tmp_path):
    """An sshd on 127.0.0.1 at a free high port, with keys made here."""
    # (its client ssh_config, its hostfile).
    if not os.path.exists("/usr/sbin/sshd"):
        pytest.skip("no sshd here: apt-get install -y openssh-server (.ci/run does)")
    folder = tmp_path / "ssh"
    folder.mkdir()
    for key in ("host", "user"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / key)], check=True
        )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (folder / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {folder}/host\nAuthorizedKeysFile "
        f"{folder}/user.pub\n"
        f"PidFile {folder}/sshd.pid\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        "StrictModes no\nUsePAM no\nLogLevel ERROR\n"
    )
    (folder / "ssh_config").write_text(
        f"Host *\n  IdentityFile {folder}/user\n  IdentitiesOnly yes\n  UserKnownHostsFile "
        f"{folder}/known_hosts\n"
        "  StrictHostKeyChecking no\n  BatchMode yes\n  LogLevel ERROR\n  ConnectTimeout 10\n"
    )
    (folder / "hosts").write_text(f"127.0.0.1:{port}\n")
    # sshd insists on its privilege-separation folder.
    os.makedirs("/run/sshd", exist_ok=True)
    daemon = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(folder / "sshd_config")],
                              start_new_session=True, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    yield str(folder / "ssh_config"), str(folder / "hosts")
    os.killpg(daemon.pid, signal.SIGTERM)
    daemon.wait(10)


def test_the_ssh_launcher_to_127_0_0_1_trains_like_one_process_and_leaves_nothing(
    synthetic_dir, tmp_path, sshd
):
    config, hosts = sshd
    single = _single(synthetic_dir, tmp_path)
    dist = subprocess.run(
        LAUNCH
        + [
            "-n",
            "2",
            "-s",
            "1",
            "--launcher",
            "ssh",
            "-H",
            hosts,
            "--ssh-config",
            config,
            "--timeout",
            "150",
            "--",
        ]
        + TRAIN
        + [
            "--data-dir",
            synthetic_dir,
            *FLAGS,
            "--kv-store",
            "dist_sync",
            "--model-prefix",
            str(tmp_path / "dist"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    _same_as_single(single, dist, tmp_path)
    # The remote side ends as its connections close.
    deadline = time.time() + 10
    while _job_processes() and time.time() < deadline:
        time.sleep(0.2)
    assert not _job_processes()


_PUSH_PULL = """
import sys
sys.path.insert(0, sys.argv[1])
from harness import compat
compat.install()
import mxnet as mx
kv = mx.kv.create("dist_sync")
kv.init(7, mx.nd.zeros(3))
for step in range(1, 4):
    kv.push(7, mx.nd.ones(3) * (kv.rank + 1) * step)
    out = mx.nd.zeros(3)
    kv.pull(7, out=out)
    expected = sum(rank + 1 for rank in range(kv.num_workers)) * step
    assert (out.asnumpy() == expected).all(), (step, out.asnumpy(), expected)
import os
os.write(1, f"ok{kv.rank}\\n".encode())  # one write: the workers share the launcher's stdout
"""


def test_the_server_sums_each_step_and_keeps_no_running_total():
    run = subprocess.run(
        LAUNCH
        + ["-n", "3", "-s", "1", "--timeout", "60", "--", sys.executable, "-c", _PUSH_PULL, ROOT],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert run.returncode == 0, run.stderr
    assert sorted(run.stdout.split()) == ["ok0", "ok1", "ok2"]


def test_a_killed_worker_stops_the_job_with_a_clear_error(synthetic_dir, tmp_path):
    prefix = str(tmp_path / "dist")
    launcher = subprocess.Popen(
        LAUNCH
        + ["-n", "2", "-s", "1", "--"]
        + TRAIN
        + [
            "--data-dir",
            synthetic_dir,
            "--num-epochs",
            "1000",
            "--batch-size",
            "64",
            "--num-hidden",
            "32,16",
            "--kv-store",
            "dist_sync",
            "--model-prefix",
            prefix,
            "--disp-batches",
            "0",
            "--plot-dir",
            "none",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 90
    while not os.path.exists(prefix + "-0002.manifest.json") and time.time() < deadline:
        time.sleep(0.05)
    assert os.path.exists(prefix + "-0002.manifest.json"), "the job never got going"
    trainers = {}
    for pid in _job_processes():
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            words = f.read().split(b"\0")
        with open(f"/proc/{pid}/environ", "rb") as f:
            role = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)[
                b"DMLC_ROLE"
            ]
        if b"--guard" not in words and any(word.endswith(b"train_mnist.py") for word in words):
            trainers[pid] = role.decode()
    assert sorted(trainers.values()) == ["scheduler", "server", "worker", "worker"]
    victim = max(pid for pid, role in trainers.items() if role == "worker")
    killed_at = time.time()
    os.kill(victim, signal.SIGKILL)
    _, err = launcher.communicate(timeout=30)
    assert time.time() - killed_at < 15
    assert launcher.returncode == 1
    assert "harness.launch: error: worker" in err and f"(pid {victim}) was killed by SIGKILL" in err
    assert not _job_processes()
