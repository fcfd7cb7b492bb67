"""Hosts for tests: network namespaces on a bridge of their own, each with its own sshd."""
# Each host is a network namespace that this module makes, with a hostname (its address) and a
# process table of its own, joined to the others and to this machine by a Linux bridge in a private
# /24 that no route here already covers. This machine is the bridge's first address: the launcher's
# side, where a scheduler or a rendezvous server listens. The hosts share this machine's files, so
# the project, its venv and the data are at the same paths on each. A process on a host sees only
# that host's processes, as on a machine of its own; from here, a test sees them all, and tells
# which host each is on by its network namespace. Nothing is addressed but loopback and the hosts.
#
#     with Hosts(tmp_path / "net", 2, send_env=["MY_MARK"]) as hosts:
#         subprocess.run(["ssh", "-F", hosts.ssh_config, hosts.addresses[0], "hostname"])
#
# Teardown, also after a failure: the hosts' sshds, and with them every process left on the hosts,
# then the namespaces, the veths and the bridge.
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

SSHD = "/usr/sbin/sshd"
# The private range the /24 is chosen in: 10.213.0.0/16.
_PREFIX = "10.213"
# How long an sshd may take to listen, on a loaded machine.
_START_S = 30.0
# How often and how many times each side of a connection checks the other: a dead link ends an ssh
# session within 15 to 20 s, on both sides.
ALIVE_INTERVAL_S, ALIVE_COUNT = 5, 3
# A process table of its own (and a /proc that shows it), whose processes end with its first.
_APART = ["--pid", "--fork", "--mount-proc", "--kill-child"]


class Unavailable(Exception):
    """This machine cannot make the hosts; the message says why, in one line."""


def _ip(*args, check=True):
    """Run `ip args`; raise Unavailable with ip's own words if it fails and check is set."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        said = (done.stderr.strip() or f"exit code {done.returncode}").splitlines()[0]
        raise Unavailable(f"`ip {' '.join(args)}` failed: {said}")
    return done


def _free_subnet():
    """A /24 in 10.213.0.0/16 that no route or address of this machine overlaps."""
    taken = []
    for line in _ip("-4", "route", "show", "table", "all").stdout.splitlines():
        words = line.split()
        # The first word that parses as a network: "default" and route types come first.
        for word in words[:2]:
            try:
                net = ipaddress.ip_network("0.0.0.0/0" if word == "default" else word, False)
            except ValueError:
                continue
            # A default route covers everything, and sends nothing of this subnet anywhere once the
            # bridge's own, narrower route exists.
            if net.prefixlen:
                taken.append(net)
            break
    candidates = [ipaddress.ip_network(f"{_PREFIX}.{x}.0/24") for x in range(256)]
    free = [net for net in candidates if not any(net.overlaps(other) for other in taken)]
    if not free:
        raise Unavailable(f"every /24 of {_PREFIX}.0.0/16 overlaps a route here")
    return free[secrets.randbelow(len(free))]


def remote_addresses(pids):
    """The far ends of the TCP connections of processes pids, as ipaddress objects."""
    # A table of /proc/PID/net is its network namespace's, and slow to read (milliseconds): once
    # for each namespace.
    sockets, readers = set(), {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    sockets.add(target[8:-1])
                    readers.setdefault(process_netns(pid), pid)
        except OSError:
            continue
    found = set()
    for pid in readers.values():
        for table in ("tcp", "tcp6"):
            try:
                with open(f"/proc/{pid}/net/{table}") as f:
                    rows = [line.split() for line in f.readlines()[1:]]
            except OSError:
                continue
            # Not the listening sockets (state 0A), whose far end is any address.
            found.update(_address(row[2]) for row in rows if row[9] in sockets and row[3] != "0A")
    return found


def _address(field):
    """An address of /proc/net/tcp (hex, in 32-bit words of host order), without its port."""
    text = field.split(":")[0]
    raw = b"".join(bytes.fromhex(text[i:i + 8])[::-1] for i in range(0, len(text), 8))
    address = ipaddress.ip_address(raw)
    return getattr(address, "ipv4_mapped", None) or address


def netns_inode(name):
    """The inode of namespace name's network stack, as /proc/PID/ns/net shows it."""
    return os.stat(f"/run/netns/{name}").st_ino


def process_netns(pid):
    """The inode of the network namespace that process pid is in, or None if it is gone."""
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


class Hosts:
    """count hosts in network namespaces on a bridge, each running an sshd; a context manager."""

    def __init__(self, folder, count, send_env=()):
        # send_env: the variables that ssh passes to the hosts (SendEnv and AcceptEnv).
        self.folder, self.count, self.send_env = str(folder), count, list(send_env)
        token = secrets.token_hex(3)
        self.names = [f"mnist-test-{token}-{i}" for i in range(count)]
        # The bridge here and each host's end of its veth share one name: one interface common to
        # every host, as Horovod (--network-interface) and Gloo want it.
        self.interface = f"mt{token}"
        self._veths = [f"mt{token}h{i}" for i in range(count)]
        self.addresses, self.hostnames, self.local_address, self.subnet = [], [], None, None
        self._daemons, self._made = [], []

    def __enter__(self):
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def _start(self):
        if os.geteuid() != 0:
            raise Unavailable("network namespaces need root")
        if not shutil.which("ip"):
            raise Unavailable("no `ip` here: apt-get install -y iproute2 (.ci/hosts-setup does)")
        if not os.path.exists(SSHD):
            raise Unavailable("no sshd here: apt-get install -y openssh-server (.ci/hosts-setup)")
        if not shutil.which("unshare"):
            raise Unavailable("no `unshare` here: apt-get install -y util-linux")
        self.subnet = subnet = _free_subnet()
        hosts = list(subnet.hosts())
        self.local_address = str(hosts[0])
        self.addresses = [str(hosts[10 + i]) for i in range(self.count)]
        # Each host's name is its address: it resolves to itself with no /etc/hosts, as Gloo needs
        # (Horovod 0.28.1 finds a process set's address by the hostname, not by its interface).
        self.hostnames = list(self.addresses)
        os.makedirs(self.folder, exist_ok=True)
        self._made.append(("link", self.interface))
        _ip("link", "add", self.interface, "type", "bridge", "forward_delay", "0")
        _ip("addr", "add", f"{self.local_address}/24", "dev", self.interface)
        _ip("link", "set", self.interface, "up")
        for name, veth, address in zip(self.names, self._veths, self.addresses):
            self._made.append(("netns", name))
            _ip("netns", "add", name)
            self._made.append(("link", veth))
            _ip("link", "add", veth, "type", "veth", "peer", "name", veth + "p", "netns", name)
            _ip("link", "set", veth, "master", self.interface, "up")
            inside = ["-n", name]
            _ip(*inside, "link", "set", veth + "p", "name", self.interface)
            _ip(*inside, "addr", "add", f"{address}/24", "dev", self.interface)
            _ip(*inside, "link", "set", self.interface, "up")
            _ip(*inside, "link", "set", "lo", "up")
        self._ssh_files()
        for i in range(self.count):
            self._start_sshd(i)
        for address in self.addresses:
            self._wait_for(address)
        # Host to host, not only here to each host: a firewall here could drop bridged traffic.
        if self.count > 1:
            probe = (f"import socket; socket.create_connection(('{self.addresses[1]}', 22), 5)"
                     ".close()")
            done = subprocess.run(
                ["ip", "netns", "exec", self.names[0], sys.executable, "-c", probe],
                capture_output=True, text=True, timeout=30)
            if done.returncode != 0:
                raise Unavailable("the hosts do not reach each other across the bridge (a "
                                  "firewall on bridged traffic?)")

    def _ssh_files(self):
        for key in ("host", "user"):
            for old in (key, key + ".pub"):
                if os.path.exists(os.path.join(self.folder, old)):
                    os.remove(os.path.join(self.folder, old))
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                            os.path.join(self.folder, key)], check=True, timeout=30)
        names = " ".join(self.send_env)
        accept = f"AcceptEnv {names}\n" if names else ""
        send = f"  SendEnv {names}\n" if names else ""
        self.ssh_config = os.path.join(self.folder, "ssh_config")
        with open(self.ssh_config, "w") as f:
            # Only these hosts are ever reached with it.
            f.write(f"Host {' '.join(self.addresses)}\n  IdentityFile {self.folder}/user\n"
                    f"  IdentitiesOnly yes\n  UserKnownHostsFile {self.folder}/known_hosts\n"
                    "  StrictHostKeyChecking no\n  BatchMode yes\n  LogLevel ERROR\n"
                    f"  ConnectTimeout 10\n  ServerAliveInterval {ALIVE_INTERVAL_S}\n"
                    f"  ServerAliveCountMax {ALIVE_COUNT}\n{send}")
        for i, address in enumerate(self.addresses):
            with open(os.path.join(self.folder, f"sshd_config.{i}"), "w") as f:
                f.write(f"ListenAddress {address}\nPort 22\nHostKey {self.folder}/host\n"
                        f"AuthorizedKeysFile {self.folder}/user.pub\n"
                        f"PidFile {self.folder}/sshd.{i}.pid\nPermitRootLogin prohibit-password\n"
                        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
                        "StrictModes no\nUsePAM no\nUseDNS no\nPrintMotd no\nPrintLastLog no\n"
                        f"LogLevel ERROR\nClientAliveInterval {ALIVE_INTERVAL_S}\n"
                        f"ClientAliveCountMax {ALIVE_COUNT}\n{accept}")
        # A `ssh` for tools that run plain `ssh HOST` (horovodrun, mpirun): this config, always.
        self.bin = os.path.join(self.folder, "bin")
        os.makedirs(self.bin, exist_ok=True)
        shim = os.path.join(self.bin, "ssh")
        with open(shim, "w") as f:
            f.write(f'#!/bin/sh\nexec {shutil.which("ssh")} -F {self.ssh_config} "$@"\n')
        os.chmod(shim, 0o755)
        self.hostfile = self.write_hostfile("hosts", self.addresses)

    def _start_sshd(self, i):
        # sshd insists on its privilege-separation folder.
        os.makedirs("/run/sshd", exist_ok=True)
        log = open(os.path.join(self.folder, f"sshd.{i}.log"), "w")
        with log:
            # The sshd is the first process of the host's own process table: what it starts sees
            # only the host's processes, as on a machine of its own, and ends with it.
            command = ["ip", "netns", "exec", self.names[i], "unshare", "--uts", *_APART, "sh",
                       "-c", 'hostname "$0" && exec "$1" -D -e -f "$2"', self.hostnames[i], SSHD,
                       os.path.join(self.folder, f"sshd_config.{i}")]
            self._daemons.append(subprocess.Popen(command, start_new_session=True,
                                                  stdin=subprocess.DEVNULL, stdout=log,
                                                  stderr=log))

    def _wait_for(self, address):
        deadline = time.monotonic() + _START_S
        while True:
            try:
                socket.create_connection((address, 22), 1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise Unavailable(f"the sshd of host {address} did not listen within "
                                      f"{_START_S:g} s") from None
                if any(daemon.poll() is not None for daemon in self._daemons):
                    raise Unavailable(f"an sshd of the hosts exited: {self._logs()}") from None
                time.sleep(0.1)

    def _logs(self):
        text = []
        for i in range(self.count):
            try:
                with open(os.path.join(self.folder, f"sshd.{i}.log")) as f:
                    text.append(f.read().strip())
            except OSError:
                pass
        return " | ".join(part for part in text if part)[:300]

    def apart(self, command):
        """command, run as on a machine of its own that shares this one's network and files."""
        # Its own process table: a launcher that stops what it finds in /proc finds its own side
        # of the job only, not the hosts', as across real machines.
        return ["unshare", *_APART, *command]

    def write_hostfile(self, name, entries):
        """A hostfile of entries (one a line) in the hosts' folder; its path."""
        path = os.path.join(self.folder, name)
        with open(path, "w") as f:
            f.write("".join(f"{entry}\n" for entry in entries))
        return path

    def where(self, pid):
        """Which host process pid runs on: its index, -1 for this machine, None if it is gone."""
        inode = process_netns(pid)
        if inode is None:
            return None
        for i, name in enumerate(self.names):
            try:
                if netns_inode(name) == inode:
                    return i
            except OSError:
                continue
        return -1

    def strangers(self, addresses):
        """Those of addresses that are neither loopback nor of these hosts' subnet."""
        return sorted(str(a) for a in addresses if not a.is_loopback and a not in self.subnet)

    def cut(self, i):
        """Take host i's link to the bridge down: it can reach nothing, and nothing reaches it."""
        _ip("link", "set", self._veths[i], "down")

    def mend(self, i):
        """Bring host i's link back up."""
        _ip("link", "set", self._veths[i], "up")

    def processes(self):
        """The pids of every process in the hosts' namespaces."""
        inodes = set()
        for name in self.names:
            try:
                inodes.add(netns_inode(name))
            except OSError:
                continue
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and process_netns(entry) in inodes:
                found.append(int(entry))
        return found

    def close(self):
        """Tear everything down, whatever state a failure left it in."""
        # The sshds: the last process of a host's process table ends with its first. Then whatever
        # is left in the namespaces, all of it this object's.
        for daemon in self._daemons:
            try:
                os.killpg(daemon.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.processes():
                try:
                    os.kill(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            deadline = time.monotonic() + 5
            while self.processes() and time.monotonic() < deadline:
                time.sleep(0.1)
        for daemon in self._daemons:
            try:
                daemon.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self._daemons = []
        # A namespace's end of a veth goes with the namespace; the bridge's end goes then too, or
        # with its own deletion.
        for kind, name in reversed(self._made):
            if kind == "netns":
                _ip("netns", "del", name, check=False)
            else:
                _ip("link", "del", name, check=False)
        self._made = []


@pytest.fixture(name="hosts")
def hosts_fixture(tmp_path):
    """hosts(count, send_env=()): that many started Hosts, torn down after the test; or a skip."""
    made = []

    def make(count, send_env=()):
        try:
            made.append(Hosts(tmp_path / f"hosts{len(made)}", count, send_env).__enter__())
        except Unavailable as why:
            pytest.skip(f"no test hosts here: {why}")
        return made[-1]
    yield make
    for each in made:
        each.close()
