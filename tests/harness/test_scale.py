"""Several devices in one process, and dist_sync workers launched by python -m harness.launch."""
# On this machine: as local processes, and over ssh to 127.0.0.1. Each job carries a variable of its
# own test, so that no test counts, or stops, the processes of anyone else's job.
import io
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import types

import pytest

import train_mnist
from harness import launch as launch_module
from helpers import (
    FIGURES,
    JOB_MARK,
    ROOT,
    TRAIN,
    assert_params_close,
    config,
    epoch_lines,
    flags,
    launch,
    run_alone,
    saved_params,
    synthetic_arrays,
    wait_for_file,
    write_mnist,
)

# 3 epochs of 17 steps (1050 samples in batches of 64), with momentum.
FLAGS = flags(batch_size=64, mom=0.9)
# Two workers and a server, on this machine.
TWO = ["-n", "2", "-s", "1"]


@pytest.mark.parametrize("cpus, settings",
                         [(2, {}), (3, {"mom": 0.9}), (2, {"optimizer": "adam", "lr": 0.001})])
def test_several_contexts_train_like_one_with_the_same_global_batch(synthetic_dir, tmp_path, cpus,
                                                                    settings):
    # 1050 samples in batches of 64: 16 batches split unevenly (22/21/21, say) and a tail of 26.
    common = dict(batch_size=64, **settings)
    one = train_mnist.train(config(synthetic_dir, model_prefix=str(tmp_path / "one"), **common))
    many = train_mnist.train(config(synthetic_dir, model_prefix=str(tmp_path / "many"), cpus=cpus,
                                    **common))
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


def _worker(folder, prefix, *extra):
    """The command of a dist_sync worker training on folder, saving under prefix."""
    return TRAIN + ["--data-dir", folder, *FLAGS, "--kv-store", "dist_sync", "--model-prefix",
                    prefix, *extra]


def _single(folder, tmp_path):
    """What one process prints training on folder, saving under tmp_path/single."""
    return run_alone(TRAIN + ["--data-dir", folder, *FLAGS, "--model-prefix",
                              str(tmp_path / "single")])


def _same_as_single(single, dist, tmp_path):
    """The dist job's (code, out, err) ended well, and it trained what single did, to 1e-5."""
    code, out, err = dist
    # The job ended by itself, past the last epoch: no worker hung waiting for another.
    assert code == 0, err
    # Rank 0 alone reports.
    assert out.count("final test accuracy") == 1
    for epoch in (1, 3):
        assert_params_close(
            saved_params(tmp_path / "single", epoch), saved_params(tmp_path / "dist", epoch)
        )
    assert epoch_lines(out) == epoch_lines(single) and len(epoch_lines(single)) == 3


def test_two_workers_one_server_train_like_one_process(synthetic_dir, tmp_path, jobs):
    # The one process trains while the job starts.
    job = jobs(launch([*TWO, "--timeout", "150"], _worker(synthetic_dir, str(tmp_path / "dist"))))
    single = _single(synthetic_dir, tmp_path)
    _same_as_single(single, job.finish(), tmp_path)
    assert not job.processes()


def test_every_line_a_process_says_to_the_launcher_is_one_write_even_unbuffered(synthetic_dir,
                                                                               tmp_path):
    # The job's processes share one pipe: a line written in two parts can have another process's
    # line between them. A datagram socket keeps each write apart, to count them.
    reader, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    env = dict(os.environ, PYTHONUNBUFFERED="1", LAUNCH_JOB_TAG="job-1", DMLC_ROLE="worker",
               DMLC_TASK_ID="0")
    command = [sys.executable, os.path.join(ROOT, "harness", "launched.py"), "--guard", "job-1",
               "--", *TRAIN, "--data-dir", synthetic_dir, *FLAGS, "--num-epochs", "1",
               "--model-prefix", str(tmp_path / "model")]
    with writer:
        guard = subprocess.Popen(command, stdout=writer, stderr=subprocess.PIPE, text=True, env=env)
    with reader:
        writes = list(iter(lambda: reader.recv(1 << 16).decode(), ""))
    assert guard.wait(timeout=120) == 0 and guard.stderr.read() == ""
    said = [text for text in writes if "@@harness.launch" in text]
    kinds = [text.split()[0] for text in said]
    assert kinds == ["@@harness.launch-loop", "@@harness.launch-loop", "@@harness.launch"]
    assert said[0] == "@@harness.launch-loop job-1 in\n" and said[1].endswith(" out\n")
    assert said[2].startswith("@@harness.launch job-1 role=worker task=0 ")
    assert said[2].endswith(" code=0\n") and said[2].count("\n") == 1


def test_a_report_written_inside_another_processs_line_is_taken_and_that_line_kept(capsys):
    # A worker printing unbuffered writes "final ..." and its newline apart; a report came between.
    stream = ("final test accuracy 0.5000 after 1 epochs"
              "@@harness.launch job-1 role=worker task=0 host=h pid=7 code=0\n\nnext\n")
    process = types.SimpleNamespace(stdout=io.StringIO(stream), poll=lambda: 0)
    job = launch_module._Job(process, (1, 1), ("job-1", [], None))
    job.reader.join(timeout=10)
    assert job.reports == [("worker", 0)]
    assert capsys.readouterr().out == "final test accuracy 0.5000 after 1 epochs\nnext\n"


@pytest.mark.slow
def test_workers_on_different_data_are_refused_before_a_step(synthetic_dir, tmp_path, jobs):
    # Worker 1 reads other pixels, of the same sizes: without the check, the job would train.
    other = tmp_path / "other"
    other.mkdir()
    arrays = synthetic_arrays()
    write_mnist(str(other), [255 - arrays[0], *arrays[1:]])
    prefix = str(tmp_path / "dist")
    choose = ('if [ "$DMLC_ROLE" = worker ] && [ "$DMLC_TASK_ID" = 1 ]; then exec "$@" --data-dir '
              f'{shlex.quote(str(other))}; fi; exec "$@"')
    job = jobs(launch([*TWO, "--timeout", "150"],
                      ["bash", "-c", choose, "bash", *_worker(synthetic_dir, prefix)]))
    code, out, err = job.finish()
    lines = [line for line in (out + err).splitlines() if "train_mnist.py: error: " in line]
    assert code != 0 and lines and "Traceback" not in out + err, out + err
    said = ("error: worker 1's data differs from worker 0's (train-images-idx3-ubyte): every "
            "worker must train on the same files; give each the same --data-dir")
    assert all(line.endswith(said) for line in lines), lines
    assert not [name for name in os.listdir(tmp_path) if name.startswith("dist")]
    assert not job.processes()


@pytest.mark.parametrize("first_ephemeral", [None, 10500])
def test_the_schedulers_port_is_free_and_outside_the_range_other_sockets_take(monkeypatch,
                                                                             first_ephemeral):
    # ps-lite's other nodes, and outgoing connections, take ports from the system's range: a
    # scheduler port inside it can be taken by another job before the scheduler binds it.
    if first_ephemeral:
        monkeypatch.setattr(launch_module, "_first_ephemeral_port", lambda: first_ephemeral)
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low, high = (int(word) for word in f.read().split())
    ports = {launch_module._free_port() for _ in range(20)}
    for port in ports:
        with socket.socket() as probe:
            probe.bind(("", port))
    if first_ephemeral:
        # No room below the range: the system's own choice.
        assert all(low <= port <= high for port in ports), ports
    else:
        assert all(10000 <= port < low for port in ports) and len(ports) > 15, ports


@pytest.mark.slow
def test_two_jobs_on_one_machine_each_listen_on_a_port_of_their_own(synthetic_dir, tmp_path, jobs):
    first = jobs(launch([*TWO, "--timeout", "150"], _worker(synthetic_dir, str(tmp_path / "a"))))
    time.sleep(0.5)
    second = jobs(launch([*TWO, "--timeout", "150"], _worker(synthetic_dir, str(tmp_path / "b"))))
    for job in (first, second):
        code, out, err = job.finish()
        assert code == 0 and out.count("final test accuracy") == 1, err
    assert saved_params(tmp_path / "a", 3).keys() == saved_params(tmp_path / "b", 3).keys()


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["first", "last", "every process"])
def test_a_sigterm_to_one_worker_stops_the_job_in_seconds_and_it_resumes_exactly(
    synthetic_dir, tmp_path, jobs, victim
):
    # The whole run's figures and bytes, straight, to compare the resumed one with.
    straight = jobs(launch([*TWO, "--timeout", "150"],
                           _worker(synthetic_dir, str(tmp_path / "straight"), "--batch-size", "10",
                                  "--metrics-file", str(tmp_path / "straight.jsonl"))))
    assert straight.finish()[0] == 0
    prefix, metrics = str(tmp_path / "cut"), str(tmp_path / "cut.jsonl")
    job = jobs(launch(TWO, _worker(synthetic_dir, prefix, "--batch-size", "10", "--metrics-file",
                                  metrics)))
    wait_for_file(prefix + "-0001.manifest.json", process=job.process)
    workers = sorted(job.processes("worker", trainers=True))
    assert len(workers) == 2
    # "every process": as Slurm ends a job, one SIGTERM to each of its processes, all at once.
    victims = {"first": workers[:1], "last": workers[-1:],
               "every process": {job.process.pid, *job.processes()}}[victim]
    signalled = time.time()
    for pid in victims:
        os.kill(pid, signal.SIGTERM)
    code, out, err = job.finish(timeout=60)
    assert code == 130 and time.time() - signalled < 15
    said = [line for line in (out + err).splitlines() if "stopped by" in line or "error" in line]
    assert len(said) == 1 and "Traceback" not in out + err, out + err
    assert not job.processes()
    # Mostly in epoch 2; now and then between epochs, which resumes from the epoch's checkpoint.
    # Rank 0 says the job's stop, naming the signal if it was its own.
    stop = re.fullmatch(r"train_mnist\.py: stopped by (?:SIGTERM|a signal to another worker) "
                        r"(in epoch 2 after batch \d+|after epoch [12]); saved \S+\. Resume with: "
                        r"(.*)", said[0])
    assert stop, said
    where, again = stop.group(1), shlex.split(stop.group(2))
    resumes = "--resume" if where.startswith("in") else "--load-epoch"
    assert again[:3] == [sys.executable, "-m", "harness.launch"] and resumes in again
    done = subprocess.run(again, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (
        open(prefix + "-0003.params", "rb").read()
        == open(tmp_path / "straight-0003.params", "rb").read()
    )
    # The metrics are part of the run: the resumed epoch's figures are the uninterrupted ones.
    figures = [[[json.loads(line)[k] for k in FIGURES] for line in open(path)]
               for path in (metrics, tmp_path / "straight.jsonl")]
    assert figures[0] == figures[1]


@pytest.mark.slow
@pytest.mark.parametrize("moment", [0.5, 1.5, 2.5, 3.5])
def test_a_sigterm_to_every_process_in_a_jobs_first_seconds_ends_it_with_one_line(
    synthetic_dir, tmp_path, jobs, moment
):
    # As Slurm ends a job: one SIGTERM to each process, at moments of its start (training begins
    # after about 3 s here).
    job = jobs(launch(TWO, _worker(synthetic_dir, str(tmp_path / "dist"), "--num-epochs", "1000")))
    time.sleep(moment)
    for pid in {job.process.pid, *job.processes()}:
        os.kill(pid, signal.SIGTERM)
    code, out, err = job.finish(timeout=60)
    said = [line for line in (out + err).splitlines() if "stopped" in line or "error" in line]
    assert code == 130 and len(said) == 1 and "Traceback" not in out + err, out + err
    # Epochs of about 40 ms: a job training by then may stop within an epoch or between two.
    training = r" (in epoch \d+ after batch \d+|after epoch \d+); saved \S+\. Resume with: "
    assert said[0].endswith(" began; nothing saved") or re.search(training, said[0]), said
    assert not job.processes()


@pytest.mark.slow
def test_a_signal_to_the_launcher_stops_every_worker_cleanly_with_one_line(
    synthetic_dir, tmp_path, jobs
):
    prefix = str(tmp_path / "dist")
    job = jobs(launch(TWO, _worker(synthetic_dir, prefix, "--num-epochs", "1000", "--batch-size",
                                  "10")))
    wait_for_file(prefix + "-0001.manifest.json", process=job.process)
    job.process.send_signal(signal.SIGINT)
    code, out, err = job.finish(timeout=60)
    said = [line for line in (out + err).splitlines() if "stopped by" in line or "error" in line]
    assert code == 130 and len(said) == 1 and "Resume with:" in said[0], out + err
    assert not job.processes()


@pytest.mark.slow
@pytest.mark.parametrize(
    "exit_code, expected", [(3, "exited with code 3"), (-9, "was killed by SIGKILL")]
)
def test_the_launcher_names_how_a_process_ended(jobs, exit_code, expected):
    script = ("import os, signal, sys; role = os.environ['DMLC_ROLE']; "
              f"code = {exit_code}; role == 'worker' and os.environ.get('DMLC_TASK_ID') == '1' and "
              "(os.kill(os.getpid(), signal.SIGKILL) if code < 0 else sys.exit(code)); "
              "import time; time.sleep(60)")
    job = jobs(launch([*TWO, "--timeout", "90"], [sys.executable, "-c", script]))
    code, out, err = job.finish(timeout=120)
    assert code == 1 and "harness.launch: error: worker 1 on " in err and expected in err, err


def test_a_bare_dist_sync_run_says_it_needs_a_launcher(synthetic_dir, capsys):
    env_names = [name for name in os.environ if name.startswith("DMLC_")]
    assert not env_names
    code = train_mnist.main(["--data-dir", synthetic_dir, "--kv-store", "dist_sync"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "python -m harness.launch -n 2 -s 1 -- python train_mnist.py --kv-store dist_sync" in err


@pytest.mark.slow
@pytest.mark.parametrize("before, after", [(2, 1), (1, 2)])
def test_a_job_resumes_on_another_worker_count_at_an_epoch_checkpoint(
    synthetic_dir, tmp_path, jobs, before, after
):
    _single(synthetic_dir, tmp_path)
    prefix = str(tmp_path / "dist")

    def run(workers, *extra):
        if workers == 1:
            run_alone(TRAIN + ["--data-dir", synthetic_dir, *FLAGS, "--model-prefix", prefix,
                               *extra])
            return
        code, _, err = jobs(launch(["-n", str(workers), "-s", "1", "--timeout", "150"],
                                   _worker(synthetic_dir, prefix, *extra))).finish()
        assert code == 0, err
    run(before, "--num-epochs", "2")
    run(after, "--load-epoch", "2")
    # Another worker count sums in another order: the parameters agree as different counts do.
    assert_params_close(saved_params(tmp_path / "single", 3), saved_params(tmp_path / "dist", 3))


@pytest.fixture
def sshd(tmp_path):
    """An sshd on 127.0.0.1 at a free high port, with keys made here: (its ssh_config, hostfile)."""
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
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {folder}/host\n"
        f"AuthorizedKeysFile {folder}/user.pub\nPidFile {folder}/sshd.pid\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\nStrictModes no\nUsePAM no\n"
        f"LogLevel ERROR\nAcceptEnv {JOB_MARK}\n")
    (folder / "ssh_config").write_text(
        f"Host *\n  IdentityFile {folder}/user\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {folder}/known_hosts\n  StrictHostKeyChecking no\n  BatchMode yes\n"
        f"  LogLevel ERROR\n  ConnectTimeout 10\n  SendEnv {JOB_MARK}\n")
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


@pytest.mark.slow
def test_the_ssh_launcher_to_127_0_0_1_trains_like_one_process_and_leaves_nothing(
    synthetic_dir, tmp_path, sshd, jobs
):
    ssh_config, hosts = sshd
    single = _single(synthetic_dir, tmp_path)
    job = jobs(launch([*TWO, "--launcher", "ssh", "-H", hosts, "--ssh-config", ssh_config,
                       "--timeout", "150"], _worker(synthetic_dir, str(tmp_path / "dist"))))
    _same_as_single(single, job.finish(), tmp_path)
    # The remote side ends as its connections close.
    assert job.gone(10)


_PUSH_PULL = """
import os, sys
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
# One write: the workers share the launcher's stdout.
os.write(1, f"ok{kv.rank}\\n".encode())
"""


@pytest.mark.slow
def test_the_server_sums_each_step_and_keeps_no_running_total(jobs):
    code, out, err = jobs(launch(["-n", "3", "-s", "1", "--timeout", "60"],
                                 [sys.executable, "-c", _PUSH_PULL, ROOT])).finish(timeout=90)
    assert code == 0, err
    assert sorted(out.split()) == ["ok0", "ok1", "ok2"]


_SLOW_EXIT = """
import os, sys, time
sys.path.insert(0, sys.argv[1])
from harness import compat
compat.install()
import mxnet as mx
kv = mx.kv.create("dist_sync")
rank = kv.rank
kv.init(3, mx.nd.zeros(2))
kv.push(3, mx.nd.ones(2))
# The kvstore's end is ps-lite's last barrier: the scheduler ends with it, and rank 1 lingers.
del kv
if rank == 1:
    time.sleep(15)
os.write(1, f"done{rank}\\n".encode())
"""


@pytest.mark.slow
def test_a_worker_slow_to_exit_after_the_last_barrier_is_waited_for(jobs):
    started = time.monotonic()
    code, out, err = jobs(launch([*TWO, "--timeout", "90"],
                                 [sys.executable, "-c", _SLOW_EXIT, ROOT])).finish(timeout=120)
    assert code == 0 and err == "", err
    assert sorted(out.split()) == ["done0", "done1"]
    assert time.monotonic() - started > 15


@pytest.mark.slow
def test_a_killed_worker_stops_the_job_with_a_clear_error(synthetic_dir, tmp_path, jobs):
    prefix = str(tmp_path / "dist")
    job = jobs(launch(TWO, _worker(synthetic_dir, prefix, "--num-epochs", "1000")),
               stdout=subprocess.DEVNULL)
    wait_for_file(prefix + "-0002.manifest.json", timeout=90, process=job.process)
    roles = {role: job.processes(role, trainers=True) for role in ("scheduler", "server", "worker")}
    assert [len(roles[role]) for role in ("scheduler", "server", "worker")] == [1, 1, 2]
    victim = max(roles["worker"])
    killed_at = time.time()
    os.kill(victim, signal.SIGKILL)
    code, _, err = job.finish(timeout=30)
    assert time.time() - killed_at < 15 and code == 1
    assert "harness.launch: error: worker" in err and f"(pid {victim}) was killed by SIGKILL" in err
    assert not job.processes()
