"""Jobs across hosts of the test's own: dist_sync over ssh, Horovod, a cut link, and MPI."""
# The hosts are network namespaces on a bridge (hosts.py), each with its own sshd; this machine is
# the launcher's side. Each job carries a variable of its own test, so that no test counts, or
# stops, the processes of anyone else's job; each test checks that its job reached nothing but
# loopback and its own hosts.
import os
import re
import shutil
import sys
import threading
import time

import pytest

from helpers import (
    JOB_MARK,
    TRAIN,
    Job,
    assert_params_close,
    epoch_lines,
    flags,
    launch,
    marked_processes,
    run_alone,
    saved_params,
)

# hosts_fixture is the fixture `hosts`, which the tests take by name.
from hosts import hosts_fixture, remote_addresses  # noqa: F401

# Every test here makes network namespaces.
pytestmark = pytest.mark.slow

HOROVODRUN = os.path.join(os.path.dirname(sys.executable), "horovodrun")
# 2 epochs of 17 steps (1050 samples in batches of 64).
FLAGS = flags(num_epochs=2, batch_size=64)
# A cut link ends the launcher within this long. Its ssh to the cut-off host notices the dead
# connection after ServerAliveInterval x ServerAliveCountMax (15 s, hosts.py) and at most one
# interval more; stopping the rest then takes a few seconds a host, and 10 s (ssh's ConnectTimeout)
# twice for the one cut off. About 50 s in all: twice that, for a loaded 2-core machine.
CUT_BOUND_S = 120
# And every process of the job is gone within this long, those of the cut-off host included, which
# nothing here can reach: its own sshd gives up on its client as ssh does (about 20 s), and hangs
# up; the guard gives its child a clean stop's time (harness/launch.py, _STOPPING_S: 60 s), then
# ends it. About 80 s: with margin.
GONE_BOUND_S = 180


class HostJob(Job):
    """A Job on the test's hosts that also notes where its processes ran and whom they reached."""

    def __init__(self, command, hosts=None, env=None):
        super().__init__(command, env=env, start_new_session=True)
        self.hosts = hosts
        # pid -> (its DMLC_ROLE, its HOROVOD_RANK, a trainer under a guard, its host (-1: here)).
        self.seen, self.peers = {}, set()
        # pid -> its parent's, as first seen: a shell that forks the trainer is one process of it.
        self.parents = {}
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

    def _watch(self):
        """Until the job's first process ends: each process once, as it was; and its peers."""
        # Every connection of them all, four times a second (a look costs milliseconds a host; a
        # small job's last seconds).
        looked = 0
        while self.process.poll() is None:
            found = self._trainers_now()
            for pid, env in found.items():
                what = (env.get("DMLC_ROLE"), env.get("HOROVOD_RANK"),
                        env.get("LAUNCH_JOB_CHILD") == "1")
                # Again after an exec (`env VAR=... python`), which keeps the pid and the host.
                if self.seen.get(pid, (None,) * 3)[:3] != what:
                    where = self.hosts.where(pid) if self.hosts else -1
                    self.seen[pid] = (*what, where)
                    self.parents.setdefault(pid, _parent(pid))
            if time.monotonic() - looked > 0.25:
                self.peers |= remote_addresses(found)
                looked = time.monotonic()
            time.sleep(0.1)

    def _trainers_now(self):
        """This job's processes now: pid -> the variables that tell its trainers apart."""
        keys = ("DMLC_ROLE", "HOROVOD_RANK", "LAUNCH_JOB_CHILD")
        return {pid: {key: env[key] for key in keys
                      if key in env and any(word.endswith("train_mnist.py") for word in words)}
                for pid, (env, words) in marked_processes(JOB_MARK, self.mark).items()}

    def finish(self, timeout=180):
        """Job.finish, once the watcher has seen the end too."""
        done = super().finish(timeout)
        self._watcher.join(10)
        return done

    def placed(self, role=None, rank=None):
        """The hosts of the job's trainers of role (dist_sync) or of rank (Horovod)."""
        return [where for pid, (role_, rank_, child, where) in self.trainers().items()
                if (role and role_ == role and child) or (rank is not None and rank_ == str(rank))]

    def trainers(self):
        """seen, less the processes that another of the guards' children started."""
        children = {pid for pid, (_, _, child, _) in self.seen.items() if child}
        return {pid: what for pid, what in self.seen.items()
                if not (what[2] and self.parents.get(pid) in children)}


def _command(folder, prefix, *extra):
    """The trainer's command on folder's data, saving under prefix."""
    return TRAIN + ["--data-dir", folder, *FLAGS, "--model-prefix", prefix, *extra]


def _same_as_single(single, out, tmp_path, name):
    """out says what the one process's single said, and tmp_path/name holds what it trained."""
    # Rank 0 alone reports, and says what one process says.
    assert out.count("final test accuracy") == 1, out[-2000:]
    assert epoch_lines(out) == epoch_lines(single) and len(epoch_lines(single)) == 2
    for epoch in (1, 2):
        assert_params_close(
            saved_params(tmp_path / "single", epoch), saved_params(tmp_path / name, epoch)
        )


def _dist_sync_job(jobs, hosts, synthetic_dir, prefix, *extra):
    """2 workers and 1 server over ssh: the server on host 0, a worker on each of hosts 1 and 2."""
    # MXNet's ssh launcher puts the servers on the first hosts of the list and the workers on the
    # next ones, in turn; its scheduler runs here, where the launcher runs, at --host-ip.
    # The launcher runs with a process table of its own: it can stop the hosts' processes only as
    # across machines, over ssh.
    hostfile = hosts.write_hostfile("order", hosts.addresses[:3])
    return jobs(hosts.apart(launch(
        ["-n", "2", "-s", "1", "--launcher", "ssh", "-H", hostfile, "--host-ip",
         hosts.local_address, "--ssh-config", hosts.ssh_config],
        _command(synthetic_dir, prefix, "--kv-store", "dist_sync", *extra))), HostJob, hosts=hosts)


def test_dist_sync_over_ssh_to_three_hosts_trains_like_one_process(synthetic_dir, tmp_path, hosts,
                                                                    jobs):
    net = hosts(3, send_env=[JOB_MARK])
    single = run_alone(_command(synthetic_dir, str(tmp_path / "single")))
    job = _dist_sync_job(jobs, net, synthetic_dir, str(tmp_path / "dist"))
    code, out, err = job.finish(timeout=240)
    assert code == 0, out[-2000:] + err[-2000:]
    _same_as_single(single, out, tmp_path, "dist")
    # The scheduler here, the server on a host of its own, each worker on another.
    assert job.placed("scheduler") == [-1] and job.placed("server") == [0]
    assert sorted(job.placed("worker")) == [1, 2]
    assert not net.strangers(job.peers) and job.peers
    assert job.gone(30)


def test_a_link_cut_mid_job_ends_it_in_bounded_time_with_one_line_and_a_checkpoint(
    synthetic_dir, tmp_path, hosts, jobs
):
    net = hosts(3, send_env=[JOB_MARK])
    prefix = str(tmp_path / "cut")
    job = _dist_sync_job(jobs, net, synthetic_dir, prefix, "--num-epochs", "1000",
                         "--batch-size", "10")
    job.wait_for(prefix + "-0001.manifest.json", timeout=120)
    assert sorted(job.placed("worker")) == [1, 2]
    # The second worker's host drops off the network, as a pulled cable would.
    net.cut(2)
    cut_at = time.monotonic()
    code, out, err = job.finish(timeout=CUT_BOUND_S)
    said = [line for line in (out + err).splitlines() if line.startswith("harness.launch:")]
    assert code == 1 and len(said) == 1 and "Traceback" not in out + err, out[-3000:] + err
    assert net.addresses[2] in said[0] and said[0].startswith("harness.launch: error: "), said
    gone = job.gone(GONE_BOUND_S - (time.monotonic() - cut_at))
    assert gone, f"left running {time.monotonic() - cut_at:.0f} s after the cut: {job.processes()}"
    assert not net.strangers(job.peers)
    # The newest checkpoint whose manifest was written resumes, in one process.
    saved = [re.fullmatch(r"cut-(\d{4})\.manifest\.json", name) for name in os.listdir(tmp_path)]
    newest = max(int(match[1]) for match in saved if match)
    run_alone(_command(synthetic_dir, prefix, "--batch-size", "10", "--load-epoch", str(newest),
                     "--num-epochs", str(newest + 1)))
    assert os.path.exists(f"{prefix}-{newest + 1:04d}.manifest.json")


@pytest.mark.skipif(not os.path.exists(HOROVODRUN),
                    reason="Horovod is not installed (requirements-horovod.txt; .ci/run builds it)")
def test_horovod_on_two_hosts_trains_like_one_process(synthetic_dir, tmp_path, hosts, jobs):
    net = hosts(2, send_env=[JOB_MARK])
    single = run_alone(_command(synthetic_dir, str(tmp_path / "single")))
    # horovodrun runs plain `ssh HOST`: the hosts' ssh, first on the PATH, brings their config.
    # Gloo uses the interface of that name on each host, and the rendezvous server is here, at the
    # same interface's address.
    job = jobs([HOROVODRUN, "--gloo", "-np", "2", "-H", ",".join(f"{a}:1" for a in net.addresses),
                "-p", "22", "--network-interface", net.interface, "--disable-cache",
                "--start-timeout", "60", "--gloo-timeout-seconds", "60",
                *_command(synthetic_dir, str(tmp_path / "hvd"), "--kv-store", "horovod")],
               HostJob, hosts=net, env={"PATH": net.bin + os.pathsep + os.environ["PATH"]})
    code, out, err = job.finish(timeout=240)
    assert code == 0, out[-3000:] + err[-3000:]
    _same_as_single(single, out, tmp_path, "hvd")
    assert job.placed(rank=0) == [0] and job.placed(rank=1) == [1]
    assert not net.strangers(job.peers) and job.peers
    assert job.gone(30)


@pytest.mark.skipif(not shutil.which("mpirun"),
                    reason="no mpirun here: apt-get install -y openmpi-bin (.ci/hosts-setup does)")
@pytest.mark.parametrize("where", ["localhost", "two hosts"])
def test_the_mpi_launcher_with_two_workers_and_a_server_trains_like_one_process(
    synthetic_dir, tmp_path, hosts, jobs, where
):
    single = run_alone(_command(synthetic_dir, str(tmp_path / "single")))
    # Open MPI refuses root unless told twice.
    env = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    net = None
    if where == "localhost":
        hostfile = tmp_path / "mpi-hosts"
        hostfile.write_text("localhost slots=3\n")
        # ps-lite's nodes would otherwise listen on, and be reached at, the first address of
        # another interface than loopback.
        env["DMLC_NODE_HOST"] = "127.0.0.1"
        where_args = []
    else:
        net = hosts(2, send_env=[JOB_MARK])
        # A slot a host: mpirun puts the workers on hosts 0 and 1, and the server on host 0. It
        # starts its daemons there over the hosts' ssh, and they call it back on the bridge.
        hostfile = net.write_hostfile("mpi", [f"{address} slots=1" for address in net.addresses])
        env.update({"OMPI_MCA_plm_rsh_agent": os.path.join(net.bin, "ssh"),
                    "OMPI_MCA_oob_tcp_if_include": net.interface})
        where_args = ["--host-ip", net.local_address]
    command = launch(["-n", "2", "-s", "1", "--launcher", "mpi", "-H", str(hostfile), *where_args],
                     _command(synthetic_dir, str(tmp_path / "mpi"), "--kv-store", "dist_sync"))
    job = jobs(net.apart(command) if net else command, HostJob, hosts=net, env=env)
    code, out, err = job.finish(timeout=240)
    assert code == 0, out[-2000:] + err[-2000:]
    _same_as_single(single, out, tmp_path, "mpi")
    if net:
        assert job.placed("scheduler") == [-1] and job.placed("server") == [0]
        assert sorted(job.placed("worker")) == [0, 1]
        assert not net.strangers(job.peers) and job.peers
    else:
        roles = [role for role, _, child, _ in job.trainers().values() if child]
        assert sorted(roles) == ["scheduler", "server", "worker", "worker"]
        assert all(address.is_loopback for address in job.peers) and job.peers, job.peers
    assert job.gone(30)


def _parent(pid):
    """pid's parent's pid, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None
