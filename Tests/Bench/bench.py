#!/usr/bin/env python3
"""The ip-masq benchmark (issue 7): latency against the number of registered pods, beside the reference plugin.

Run through `bash .ci/bench`, which builds the release binary and the libcni harness first. Everything happens inside
network namespaces this program creates and deletes (also on failure or Ctrl-C); the machine's own firewall is never
touched. Python 3 standard library only.

What is timed, exec to exit (posix_spawn .. wait4 of the direct child, from a process that has entered the namespace):

* plugin alone, ADD and DEL of one pod, with N = 0, 1,000 and 10,000 pods already registered, for the nftables backend
  (libnftables, and the `nft` binary fallback), iptables-nft and iptables-legacy;
* the floors, in the same namespaces and interleaved with the plugin runs: `/bin/true`, `ip-masq` VERSION, one
  `nft add element` / `nft delete element` on the plugin's own pod set, one `ipset add` / `ipset del` on the iptables
  backend's pod set, one `iptables-restore --noflush` adding a rule;
* whole pod ADD and DEL through libcni (Tests/cnitool): bridge (ipMasq false) + host-local + ip-masq against the
  reference bridge (ipMasq true) + host-local, with N = 0 and 1,000 pods' worth of existing masquerade state.

Pre-registered pods are written in bulk, the way the plugin writes them: one pod is registered for real (plugin ADD, or
libcni ADD for whole pods), its records and netfilter entries are read back and used as a template for N others
(records copied with the container ID and address replaced; the elements added in one `nft -f` / `ipset restore`; for
the reference, its chain and POSTROUTING jump copied with one `iptables-restore --noflush`); then the template pod is
deleted for real. A CHECK of one bulk pod through the plugin proves the bulk state reads like the plugin's own.
"""

import argparse
import ctypes
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

CLONE_NEWNET = 0x40000000
LIBC = ctypes.CDLL(None, use_errno=True)
HOST_NETNS = os.open("/proc/self/ns/net", os.O_RDONLY)
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SHM = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


def log(message):
    print(message, file=sys.stderr, flush=True)


# --- namespaces -------------------------------------------------------------------------------------------------

class Namespaces:
    """Every namespace this run creates, deleted at the end whatever happens."""

    def __init__(self):
        self.names = []
        self.prefix = "ipmb%d" % os.getpid()

    def add(self, label):
        name = "%s-%s" % (self.prefix, label)
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.names.append(name)
        with inside(name):
            run(["ip", "link", "set", "lo", "up"])
        return name

    def delete(self, name):
        subprocess.run(["ip", "netns", "del", name], stderr=subprocess.DEVNULL)
        if name in self.names:
            self.names.remove(name)

    def delete_all(self):
        os.environ.pop("IPMB_NS", None)
        setns_fd(HOST_NETNS)
        for name in list(self.names):
            self.delete(name)


HOST_NETNS_INODE = os.fstat(HOST_NETNS).st_ino
NETFILTER_TOOLS = ("nft", "iptables", "ip6tables", "ipset", "ip-masq", "cnitool")


def guard(argv):
    """Refuses to run a netfilter tool, the plugin or the harness in the machine's own network namespace."""
    name = os.path.basename(argv[0])
    if name.startswith(NETFILTER_TOOLS) and os.stat("/proc/thread-self/ns/net").st_ino == HOST_NETNS_INODE:
        raise RuntimeError("refusing to run %s outside a benchmark namespace" % name)


def setns_fd(fd):
    if LIBC.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns failed")


class inside:
    """Runs the block (and every child it starts) in a network namespace, then returns to the one it came from."""

    def __init__(self, name):
        self.name = name
        self.previous = None

    def __enter__(self):
        self.previous = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        fd = os.open("/run/netns/" + self.name, os.O_RDONLY)
        try:
            setns_fd(fd)
        finally:
            os.close(fd)

    def __exit__(self, *exc):
        setns_fd(self.previous)
        os.close(self.previous)


# --- processes --------------------------------------------------------------------------------------------------

def run(argv, data=b"", env=None, check=True):
    """Runs a setup command (untimed); returns its stdout as text."""
    guard(argv)
    result = subprocess.run(argv, input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env if env is not None else dict(os.environ, PATH=PATH))
    if check and result.returncode != 0:
        raise RuntimeError("%s failed (%d): %s%s" % (" ".join(argv), result.returncode,
                                                    result.stderr.decode(errors="replace"), result.stdout.decode(errors="replace")))
    return result.stdout.decode(errors="replace")


def timed(argv, env, data=b""):
    """Exec to exit of one child in milliseconds, with its exit status and output.

    stdin is a memfd holding `data` (so writing it is not timed), stdout and stderr go to memfds."""
    guard(argv)
    stdin = os.memfd_create("stdin")
    os.write(stdin, data)
    os.lseek(stdin, 0, os.SEEK_SET)
    out = os.memfd_create("stdout")
    err = os.memfd_create("stderr")
    actions = [(os.POSIX_SPAWN_DUP2, stdin, 0), (os.POSIX_SPAWN_DUP2, out, 1), (os.POSIX_SPAWN_DUP2, err, 2)]
    start = time.perf_counter_ns()
    pid = os.posix_spawn(argv[0], argv, env, file_actions=actions)
    _, status, _ = os.wait4(pid, 0)
    elapsed = (time.perf_counter_ns() - start) / 1e6
    texts = []
    for fd in (out, err):
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        texts.append(b"".join(chunks).decode(errors="replace"))
        os.close(fd)
    os.close(stdin)
    return elapsed, os.waitstatus_to_exitcode(status), texts[0], texts[1]


def must(result, what):
    elapsed, code, out, err = result
    if code != 0:
        raise RuntimeError("%s exited %d:\n%s%s" % (what, code, err, out))
    return elapsed


def peak_rss_kib(argv, env, data=b""):
    """Peak RSS of a child in KiB, through GNU time (it forks from a small process, so the figure is the child's own;
    wait4 after posix_spawn would report this Python process's RSS, inherited through vfork)."""
    guard(argv)
    with tempfile.NamedTemporaryFile() as report:
        result = subprocess.run(["/usr/bin/time", "-o", report.name, "-f", "%M"] + argv, input=data, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if result.returncode != 0:
            raise RuntimeError("%s failed under time: %s" % (argv, result.stderr.decode(errors="replace")))
        return int(open(report.name).read().split()[-1])


def which(name):
    path = shutil.which(name, path=PATH)
    if not path:
        raise RuntimeError("%s is not installed" % name)
    return path


# --- statistics -------------------------------------------------------------------------------------------------

class Samples:
    def __init__(self):
        self.values = []

    def add(self, value):
        self.values.append(value)

    def summary(self):
        if not self.values:
            return None
        ordered = sorted(self.values)
        return {"median": statistics.median(ordered), "min": ordered[0], "max": ordered[-1], "n": len(ordered)}


def collect(results, key, samples):
    summary = samples.summary()
    if summary is not None:
        results[key] = summary


# --- the plugin's own state, read back and copied -----------------------------------------------------------------

def ip_pattern(ip):
    return re.compile(r"(?<![0-9.])" + re.escape(ip) + r"(?![0-9])")


def substitute(text, cid, ip, new_cid, new_ip):
    return ip_pattern(ip).sub(new_ip, text.replace(cid, new_cid))


def bulk_records(state_dir, cid, ip, pods):
    """Copies every file of the template attachment (path or content naming its container ID or address) for each pod."""
    templates = []
    for directory, _, files in os.walk(state_dir):
        for name in files:
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, state_dir)
            content = open(path, "rb").read().decode("utf-8", errors="surrogateescape")
            if cid in relative or ip_pattern(ip).search(relative) or cid in content or ip_pattern(ip).search(content):
                templates.append((relative, content, os.stat(path).st_mode & 0o777))
    if not templates:
        raise RuntimeError("no record of the template pod %s (%s) under %s" % (cid, ip, state_dir))
    made = set()
    for new_cid, new_ip in pods:
        for relative, content, mode in templates:
            target = os.path.join(state_dir, substitute(relative, cid, ip, new_cid, new_ip))
            parent = os.path.dirname(target)
            if parent not in made:
                os.makedirs(parent, mode=0o700, exist_ok=True)
                made.add(parent)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            os.write(fd, substitute(content, cid, ip, new_cid, new_ip).encode("utf-8", errors="surrogateescape"))
            os.close(fd)
    return len(templates)


def bulk_nft_elements(cid, ip, pods):
    """Adds, for each pod, the element the plugin added for the template pod (same set, its owner comment)."""
    ruleset = json.loads(run(["nft", "-j", "list", "ruleset"]))
    script = []
    for item in ruleset["nftables"]:
        body = item.get("set")
        if not body:
            continue
        for element in body.get("elem", []):
            value = element.get("elem", {}).get("val") if isinstance(element, dict) else element
            if value != ip:
                continue
            comment = element["elem"].get("comment") if isinstance(element, dict) else None
            target = "%s %s %s" % (body["family"], body["table"], body["name"])
            for start in range(0, len(pods), 500):
                parts = []
                for new_cid, new_ip in pods[start:start + 500]:
                    parts.append(new_ip + (' comment "%s"' % comment.replace(cid, new_cid) if comment else ""))
                script.append("add element %s { %s }" % (target, ", ".join(parts)))
    if not script:
        raise RuntimeError("no nftables element of the template pod %s" % ip)
    run(["nft", "-f", "-"], ("\n".join(script) + "\n").encode())


def bulk_ipset_elements(cid, ip, pods):
    """Adds, for each pod, the ipset element the plugin added for the template pod."""
    lines = [line for line in run(["ipset", "save"]).splitlines()
             if line.startswith("add ") and ip_pattern(ip).search(line)]
    if not lines:
        raise RuntimeError("no ipset element of the template pod %s" % ip)
    script = [substitute(line, cid, ip, new_cid, new_ip) for new_cid, new_ip in pods for line in lines]
    run(["ipset", "-exist", "restore"], ("\n".join(script) + "\n").encode())


def reference_chain(network, cid):
    """The per-pod chain name of the reference plugins (utils.FormatChainName)."""
    return "CNI-" + hashlib.sha512((network + cid).encode()).hexdigest()[:24]


def bulk_reference_rules(iptables, network, cid, ip, pods):
    """Copies the reference bridge's per-pod chain and POSTROUTING jump (read back from its real ADD) for each pod."""
    saved = run([iptables + "-save", "-t", "nat"]).splitlines()
    chains = set()
    for line in saved:
        if line.startswith("-A POSTROUTING") and ip_pattern(ip).search(line) and "-j CNI-" in line:
            chains.add(line.split("-j ")[-1].split()[0])
    if len(chains) != 1:
        raise RuntimeError("expected one reference chain for %s in:\n%s" % (ip, "\n".join(saved)))
    chain = chains.pop()
    template = [line for line in saved if chain in line and not line.startswith("#")]
    declarations = [line for line in template if line.startswith(":")]
    rules = [line for line in template if line.startswith("-A")]
    if len(declarations) != 1 or len(rules) < 2:
        raise RuntimeError("unexpected reference rules for %s: %s" % (ip, template))
    out = ["*nat"]
    new_chains = [(reference_chain(network, new_cid), new_cid, new_ip) for new_cid, new_ip in pods]
    for new_chain, _, _ in new_chains:
        out.append(declarations[0].replace(chain, new_chain))
    for new_chain, new_cid, new_ip in new_chains:
        for rule in rules:
            out.append(substitute(rule.replace(chain, new_chain), cid, ip, new_cid, new_ip))
    out.append("COMMIT")
    run([iptables + "-restore", "-w", "5", "--noflush"], ("\n".join(out) + "\n").encode())
    return chain, rules


def count_nft_elements(ip_prefix):
    text = run(["nft", "-j", "list", "ruleset"])
    return sum(1 for item in json.loads(text)["nftables"] if "set" in item
               for element in item["set"].get("elem", [])
               if str(element.get("elem", {}).get("val") if isinstance(element, dict) else element).startswith(ip_prefix))


# --- plugin alone -------------------------------------------------------------------------------------------------

class PluginScenario:
    """One namespace with N pods registered in one backend; times ADD and DEL of one more pod, and the floors."""

    SUBNET = "10.200.0.0/16"

    def __init__(self, bench, backend, n):
        self.bench = bench
        self.backend = backend  # "nftables", "iptables-nft" or "iptables-legacy"
        self.n = n
        self.work = tempfile.mkdtemp(prefix="ipmasq-bench-", dir=SHM)
        self.state_dir = self.work + "/state"

    def netconf(self, ip, prev=True, random_fully=None):
        conf = {"cniVersion": "1.0.0", "name": "bench", "type": "ip-masq",
                "lockFile": self.work + "/ip-masq.lock", "stateDir": self.state_dir}
        if random_fully is not None:
            conf["randomFully"] = random_fully
        if self.backend == "nftables":
            conf["backend"] = "nftables"
        else:
            conf["backend"] = "iptables"
            conf["iptablesMode"] = self.backend.split("-")[1]
        if prev:
            conf["prevResult"] = {"cniVersion": "1.0.0",
                                  "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/bench"}],
                                  "ips": [{"interface": 0, "address": ip + "/16", "gateway": "10.200.0.1"}]}
        return json.dumps(conf).encode()

    def env(self, command, cid):
        return {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_IFNAME": "eth0",
                "CNI_NETNS": "/var/run/netns/bench", "CNI_PATH": "/opt/cni/bin", "PATH": PATH}

    def call(self, binary, command, cid, ip):
        return timed([binary], self.env(command, cid), self.netconf(ip))

    @staticmethod
    def bulk_ip(index):
        return "10.200.%d.%d" % (index // 250, index % 250 + 2)

    def prepare(self):
        plugin = self.bench.plugin
        template_cid, template_ip = "bench-template-0000", "10.200.254.254"
        must(self.call(plugin, "ADD", template_cid, template_ip), "template ADD")
        if self.n:
            pods = [("bench-pod-%05d" % i, self.bulk_ip(i)) for i in range(self.n)]
            bulk_records(self.state_dir, template_cid, template_ip, pods)
            if self.backend == "nftables":
                bulk_nft_elements(template_cid, template_ip, pods)
            else:
                bulk_ipset_elements(template_cid, template_ip, pods)
            # The bulk state must read like the plugin's own: CHECK one bulk pod.
            middle_cid, middle_ip = pods[self.n // 2]
            must(timed([plugin], self.env("CHECK", middle_cid), self.netconf(middle_ip)), "CHECK of a bulk pod")
        must(self.call(plugin, "DEL", template_cid, template_ip), "template DEL")
        self.verify_count(self.n)

    def verify_count(self, expected):
        if self.backend == "nftables":
            found = count_nft_elements("10.200.")
        else:
            found = sum(1 for line in run(["ipset", "save"]).splitlines()
                        if line.startswith("add IPMASQ-P4") and " 10.200." in line)
        if found != expected:
            raise RuntimeError("%s: %d pod elements registered, expected %d" % (self.backend, found, expected))

    def floor_commands(self, ip):
        """(label, add argv, delete argv) for the single-element floors of this backend."""
        if self.backend == "nftables":
            return [("nft element", ["nft", "add", "element", "inet", "ip_masq", "pods4_bench", "{", ip, "}"],
                     ["nft", "delete", "element", "inet", "ip_masq", "pods4_bench", "{", ip, "}"])]
        return [("ipset element", ["ipset", "add", "IPMASQ-P4-bench", ip], ["ipset", "del", "IPMASQ-P4-bench", ip])]

    def restore_floor(self, index):
        """One `iptables-restore --noflush` that adds a rule (timed), then its removal (untimed)."""
        restore = which("iptables-%s-restore" % self.backend.split("-")[1])
        rule = "-A IPMB-FLOOR -s 10.201.%d.%d/32 -j RETURN" % (index // 250, index % 250 + 1)
        elapsed = must(timed([restore, "-w", "5", "--noflush"], {"PATH": PATH},
                             ("*nat\n%s\nCOMMIT\n" % rule).encode()), "iptables-restore floor")
        run([restore, "-w", "5", "--noflush"], b"*nat\n-F IPMB-FLOOR\nCOMMIT\n")
        return elapsed

    def measure(self, runs):
        results = {}
        plugin = self.bench.plugin
        samples = {}
        def sample(key):
            return samples.setdefault(key, Samples())
        if self.backend != "nftables":
            restore = which("iptables-%s-restore" % self.backend.split("-")[1])
            run([restore, "-w", "5", "--noflush"], b"*nat\n:IPMB-FLOOR - [0:0]\nCOMMIT\n")
        floors = [(label, [which(a[0])] + a[1:], [which(d[0])] + d[1:]) for label, a, d in self.floor_commands("10.200.250.1")]
        # Warm-up (untimed): page cache, the network record written, the sets in place.
        for warm in range(3):
            cid, ip = "bench-warm-%d" % warm, "10.200.210.%d" % (warm + 2)
            must(self.call(plugin, "ADD", cid, ip), "warm-up ADD")
            must(self.call(plugin, "DEL", cid, ip), "warm-up DEL")
        # One pod's ADD and DEL, interleaved with the floors so that drift in the machine's load hits both alike.
        for index in range(runs):
            cid, ip = "bench-run-%04d" % index, "10.200.200.%d" % (index % 250 + 2)
            sample("ADD").add(must(self.call(plugin, "ADD", cid, ip), "ADD"))
            sample("DEL").add(must(self.call(plugin, "DEL", cid, ip), "DEL"))
            for label, add, delete in floors:
                sample("floor add: " + label).add(must(timed(add, {"PATH": PATH}), label + " add"))
                sample("floor delete: " + label).add(must(timed(delete, {"PATH": PATH}), label + " delete"))
            if self.backend != "nftables":
                sample("floor: iptables-restore --noflush").add(self.restore_floor(index))
        # The plugin's own overhead without netfilter: DEL of a pod that was never registered takes the lock and looks
        # for its record, then has nothing to change.
        for index in range(runs):
            sample("DEL, nothing registered (lock, records)").add(
                must(self.call(plugin, "DEL", "bench-unknown-%04d" % index, "10.200.199.%d" % (index % 250 + 2)), "DEL of nothing"))
        # Peak RSS (untimed, through GNU time): a few ADD/DEL pairs.
        for attempt in range(3):
            cid, ip = "bench-rss-%d" % attempt, "10.200.220.%d" % (attempt + 2)
            for verb in ("ADD", "DEL"):
                value = peak_rss_kib([plugin], self.env(verb, cid), self.netconf(ip))
                results["rss " + verb] = max(results.get("rss " + verb, 0), value)
        if self.backend == "nftables":
            # An ADD that also rewrites the node-wide rules (the network's first pod, or a changed config): a script
            # through the full executor. libnftables, and the `nft` binary it falls back to (the same binary beside an
            # empty libnftables.so.1). Every ADD flips randomFully, so every one rewrites.
            executors = [("libnftables", plugin), ("nft binary", self.bench.plugin_without_libnftables)]
            flip = False
            for index in range(max(runs // 2, 5)):
                for position, (label, binary) in enumerate(executors):
                    cid, ip = "bench-rewrite-%04d-%d" % (index, position), "10.200.230.%d" % (position * 100 + index % 100 + 2)
                    conf = self.netconf(ip, random_fully=flip)
                    flip = not flip
                    key = "ADD, node-wide rewrite (%s)" % label
                    sample(key).add(must(timed([binary], self.env("ADD", cid), conf), key))
                    must(timed([binary], self.env("DEL", cid), conf), "DEL after a rewrite")
            conf = self.netconf("10.200.240.2", random_fully=flip)
            results["rss ADD, node-wide rewrite (libnftables)"] = peak_rss_kib([plugin], self.env("ADD", "bench-rss-rw"), conf)
            must(timed([plugin], self.env("DEL", "bench-rss-rw"), conf), "DEL after a rewrite")
        for key, values in samples.items():
            collect(results, key, values)
        self.verify_count(self.n)
        return results

    def close(self):
        shutil.rmtree(self.work, ignore_errors=True)


# --- whole pod through libcni ---------------------------------------------------------------------------------------

class PodScenario:
    """A node namespace with a conflist; times whole pod ADD and DEL through libcni with N pods' worth of state."""

    NETWORK = "benchnet"

    def __init__(self, bench, variant, n):
        self.bench = bench
        self.variant = variant  # "ours" (ip-masq, nftables), "ours-iptables-nft", "reference"
        self.n = n
        self.work = tempfile.mkdtemp(prefix="ipmasq-bench-pod-", dir=SHM)
        os.makedirs(self.work + "/net.d")
        os.makedirs(self.work + "/cache")
        self.pods = []

    def conflist(self):
        bridge = {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": self.variant == "reference",
                  "hairpinMode": True,
                  "ipam": {"type": "host-local", "dataDir": self.work + "/host-local",
                           "ranges": [[{"subnet": "10.88.0.0/16", "rangeStart": "10.88.100.1", "rangeEnd": "10.88.250.254"}]],
                           "routes": [{"dst": "0.0.0.0/0"}]}}
        plugins = [bridge]
        if self.variant not in ("reference", "none"):
            masq = {"type": "ip-masq", "lockFile": self.work + "/ip-masq.lock", "stateDir": self.work + "/state"}
            if self.variant == "ours":
                masq["backend"] = "nftables"
            else:
                masq["backend"] = "iptables"
                masq["iptablesMode"] = "nft"
            plugins.append(masq)
        return {"cniVersion": "1.0.0", "name": self.NETWORK, "plugins": plugins}

    def env(self, cid):
        return {"NETCONFPATH": self.work + "/net.d", "CNI_PATH": self.bench.cni_bin, "CNI_CACHE_DIR": self.work + "/cache",
                "CNI_CONTAINERID": cid, "CNI_IFNAME": "eth0", "PATH": PATH,
                "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=%s;K8S_POD_INFRA_CONTAINER_ID=%s" % (cid, cid)}

    def cni(self, verb, cid, pod_ns):
        return timed([self.bench.cnitool, verb, self.NETWORK, "/run/netns/" + pod_ns], self.env(cid))

    def new_pod(self, label):
        name = self.bench.namespaces.add(label)
        self.pods.append(name)
        return name

    def drop_pod(self, name):
        self.bench.namespaces.delete(name)
        self.pods.remove(name)

    @staticmethod
    def bulk_ip(index):
        return "10.88.%d.%d" % (index // 250, index % 250 + 2)

    def prepare(self, node):
        with open(self.work + "/net.d/10-bench.conflist", "w") as handle:
            json.dump(self.conflist(), handle)
        template_cid = "bench-pod-template-%s" % self.variant
        pod = self.new_pod("tpl")
        with inside(node):
            run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
            result = self.cni("add", template_cid, pod)
            must(result, "template pod ADD (%s)" % self.variant)
            ip = json.loads(result[2])["ips"][0]["address"].split("/")[0]
            if self.n:
                pods = [("bench-pod-%05d" % i, self.bulk_ip(i)) for i in range(self.n)]
                if self.variant == "reference":
                    self.reference_template = bulk_reference_rules("iptables-nft", self.NETWORK, template_cid, ip, pods)
                else:
                    bulk_records(self.work + "/state", template_cid, ip, pods)
                    if self.variant == "ours":
                        bulk_nft_elements(template_cid, ip, pods)
                    else:
                        bulk_ipset_elements(template_cid, ip, pods)
            must(self.cni("del", template_cid, pod), "template pod DEL (%s)" % self.variant)
        self.drop_pod(pod)

    def measure_one(self, node, index):
        """ADD then DEL of one new pod; (add ms, del ms)."""
        cid = "bench-pod-run-%04d" % index
        pod = self.new_pod("p%d" % index)
        with inside(node):
            add = must(self.cni("add", cid, pod), "pod ADD (%s, N=%d)" % (self.variant, self.n))
            delete = must(self.cni("del", cid, pod), "pod DEL (%s, N=%d)" % (self.variant, self.n))
        self.drop_pod(pod)
        return add, delete

    def verify_state(self):
        """After the runs, exactly the N bulk pods' state is left."""
        if self.variant == "none":
            return
        if self.variant == "reference":
            jumps = sum(1 for line in run(["iptables-nft-save", "-t", "nat"]).splitlines()
                        if line.startswith("-A POSTROUTING") and "-j CNI-" in line)
            found = jumps
        elif self.variant == "ours":
            found = count_nft_elements("10.88.")
        else:
            found = sum(1 for line in run(["ipset", "save"]).splitlines() if line.startswith("add IPMASQ-P4") and " 10.88." in line)
        if found != self.n:
            raise RuntimeError("%s: %d pods' masquerade state left after the runs, expected %d" % (self.variant, found, self.n))

    def close(self):
        for pod in list(self.pods):
            self.drop_pod(pod)
        shutil.rmtree(self.work, ignore_errors=True)


# --- the run ----------------------------------------------------------------------------------------------------------

class Bench:
    def __init__(self, args):
        self.plugin = os.path.abspath(args.plugin)
        self.cnitool = os.path.abspath(args.cnitool)
        self.runs = args.runs
        self.pod_runs = args.pod_runs
        self.namespaces = Namespaces()
        self.scratch = tempfile.mkdtemp(prefix="ipmasq-bench-bin-", dir=SHM)
        # The same binary beside an empty libnftables.so.1: its dlopen (rpath $ORIGIN first) fails, so it falls back to
        # the `nft` binary, while `nft` itself still loads the real library.
        hidden = self.scratch + "/nft-binary"
        os.makedirs(hidden)
        shutil.copy2(self.plugin, hidden + "/ip-masq")
        open(hidden + "/libnftables.so.1", "w").close()
        self.plugin_without_libnftables = hidden + "/ip-masq"
        # CNI_PATH for libcni: the reference plugins plus ip-masq.
        self.cni_bin = self.scratch + "/cni-bin"
        os.makedirs(self.cni_bin)
        for name in os.listdir(args.reference_plugins):
            os.symlink(os.path.join(args.reference_plugins, name), os.path.join(self.cni_bin, name))
        os.symlink(self.plugin, self.cni_bin + "/ip-masq")
        self.results = {"plugin": {}, "pod": {}, "floor": {}, "noise": []}
        self.machine = None

    def close(self):
        self.namespaces.delete_all()
        shutil.rmtree(self.scratch, ignore_errors=True)

    def note_load(self, label):
        self.results["noise"].append((label, open("/proc/loadavg").read().split()[0]))

    def start_up(self):
        node = self.namespaces.add("startup")
        true_samples, version_samples = Samples(), Samples()
        with inside(node):
            for index in range(max(self.runs * 5, 50) + 5):
                t = must(timed(["/bin/true"], {"PATH": PATH}), "/bin/true")
                v = must(timed([self.plugin], {"CNI_COMMAND": "VERSION", "PATH": PATH}), "VERSION")
                if index >= 5:
                    true_samples.add(t)
                    version_samples.add(v)
            rss = max(peak_rss_kib([self.plugin], {"CNI_COMMAND": "VERSION", "PATH": PATH}) for _ in range(3))
            true_rss = max(peak_rss_kib(["/bin/true"], {"PATH": PATH}) for _ in range(3))
            # STATUS while another invocation holds the node lock (issue 11.7: no lock wait, target well under 100 ms).
            status_dir = tempfile.mkdtemp(prefix="ipmasq-bench-status-", dir=SHM)
            lock_path = status_dir + "/lock"
            status_stdin = json.dumps({"cniVersion": "1.1.0", "name": "benchnet", "type": "ip-masq",
                                       "lockFile": lock_path, "stateDir": status_dir + "/state"}).encode()
            holder = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(holder, fcntl.LOCK_EX)
            status_samples = Samples()
            for index in range(max(self.runs * 2, 20) + 3):
                elapsed = must(timed([self.plugin], {"CNI_COMMAND": "STATUS", "CNI_PATH": "/opt/cni/bin", "PATH": PATH}, status_stdin), "STATUS")
                if index >= 3:
                    status_samples.add(elapsed)
            os.close(holder)
            shutil.rmtree(status_dir, ignore_errors=True)
        self.namespaces.delete(node)
        self.results["floor"]["ip-masq STATUS, lock busy"] = status_samples.summary()
        self.results["floor"]["/bin/true"] = true_samples.summary()
        self.results["floor"]["ip-masq VERSION"] = version_samples.summary()
        self.results["floor"]["rss VERSION"] = rss
        self.results["floor"]["rss /bin/true"] = true_rss

    def plugin_alone(self, backends, counts):
        for backend in backends:
            for n in counts:
                log("plugin alone: %s, N=%d" % (backend, n))
                self.note_load("plugin %s N=%d" % (backend, n))
                node = self.namespaces.add("%s-%d" % (backend.replace("iptables-", "ipt"), n))
                scenario = PluginScenario(self, backend, n)
                try:
                    with inside(node):
                        started = time.time()
                        scenario.prepare()
                        log("  %d pods registered in bulk in %.1f s" % (n, time.time() - started))
                        self.results["plugin"].setdefault(backend, {})[n] = scenario.measure(self.runs)
                finally:
                    scenario.close()
                    self.namespaces.delete(node)

    def whole_pod(self, variants, counts):
        """Per N, every variant's node is prepared first; then the runs go round the variants, one pod each, so that
        a change in the machine's load affects them alike."""
        for n in counts:
            chosen = [v for v in variants if n == 0 or v != "none"]
            scenarios = []
            try:
                for variant in chosen:
                    log("whole pod through libcni: %s, N=%d" % (variant, n))
                    self.note_load("pod %s N=%d" % (variant, n))
                    node = self.namespaces.add("node-%s-%d" % (variant, n))
                    scenario = PodScenario(self, variant, n)
                    scenarios.append((node, scenario))
                    started = time.time()
                    scenario.prepare(node)
                    log("  %d pods' state in bulk in %.1f s" % (n, time.time() - started))
                samples = {variant: (Samples(), Samples()) for variant in chosen}
                for index in range(self.pod_runs + 2):
                    for node, scenario in scenarios:
                        add, delete = scenario.measure_one(node, index)
                        if index >= 2:  # the first two warm the page cache
                            samples[scenario.variant][0].add(add)
                            samples[scenario.variant][1].add(delete)
                for node, scenario in scenarios:
                    with inside(node):
                        scenario.verify_state()
                    adds, dels = samples[scenario.variant]
                    self.results["pod"].setdefault(scenario.variant, {})[n] = {"ADD": adds.summary(), "DEL": dels.summary()}
            finally:
                for node, scenario in scenarios:
                    scenario.close()
                    self.namespaces.delete(node)


# --- report -----------------------------------------------------------------------------------------------------------

def fmt(summary):
    if not summary:
        return "–"
    return "%.2f (%.2f–%.2f)" % (summary["median"], summary["min"], summary["max"])


def median(summary):
    return summary["median"] if summary else None


def tool_version(argv):
    """The first line a tool prints about its version (run by the caller inside a benchmark namespace)."""
    try:
        env = dict(os.environ, PATH=os.environ.get("PATH", "") + ":" + PATH)
        return (run(argv, check=False, env=env).strip().splitlines() or ["?"])[0]
    except Exception:
        return "?"


def machine(bench):
    """The machine's description, with the tool versions asked inside a namespace of the run."""
    if bench.machine is None:
        node = bench.namespaces.add("info")
        with inside(node):
            bench.machine = machine_facts()
        bench.namespaces.delete(node)
    return bench.machine


def machine_facts():
    cpu = "?"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory = "?"
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal"):
            memory = "%.1f GiB" % (int(line.split()[1]) / 1048576)
    return [
        ("CPU", "%s, %d CPUs (nproc)" % (cpu, os.cpu_count())),
        ("memory", memory),
        ("kernel", platform.release()),
        ("OS", dict(line.strip().split("=", 1) for line in open("/etc/os-release") if "=" in line).get("PRETTY_NAME", "?").strip('"')),
        ("swift", tool_version(["swift", "--version"])),
        ("nft", tool_version(["nft", "--version"])),
        ("iptables", tool_version(["iptables", "--version"])),
        ("ipset", tool_version(["ipset", "version"])),
        ("libcni / reference plugins", "Debian golang-github-appc-cni-dev %s, containernetworking-plugins %s" % (
            tool_version(["dpkg-query", "-W", "-f=${Version}", "golang-github-appc-cni-dev"]),
            tool_version(["dpkg-query", "-W", "-f=${Version}", "containernetworking-plugins"]))),
    ]


def report(bench, args, elapsed):
    r = bench.results
    lines = []
    out = lines.append
    out("# ip-masq benchmark results")
    out("")
    out("Generated by `bash .ci/bench` (Tests/Bench/bench.py) in %.0f s, %d runs per plugin figure (BENCH_RUNS), %d per whole-pod figure (BENCH_POD_RUNS). "
        "Times are exec-to-exit in milliseconds: median (min–max). Everything ran in throwaway network namespaces on one machine in one run; "
        "state directories on tmpfs (%s)." % (elapsed, bench.runs, bench.pod_runs, SHM))
    out("")
    out("## Machine")
    out("")
    out("| | |")
    out("|---|---|")
    for key, value in bench.machine or []:
        out("| %s | %s |" % (key, value))
    out("| load average (1 min) during the run | %s |" % ", ".join("%s: %s" % (label, load) for label, load in r["noise"][:1] + r["noise"][-1:]))
    out("")
    floor = r["floor"]
    if floor:
        out("## Start-up")
        out("")
        out("| | median (min–max) ms | peak RSS |")
        out("|---|---:|---:|")
        out("| `/bin/true` | %s | %d KiB |" % (fmt(floor["/bin/true"]), floor["rss /bin/true"]))
        out("| `ip-masq` VERSION | %s | %d KiB |" % (fmt(floor["ip-masq VERSION"]), floor["rss VERSION"]))
        if "ip-masq STATUS, lock busy" in floor:
            out("| `ip-masq` STATUS, node lock held by another process | %s | |" % fmt(floor["ip-masq STATUS, lock busy"]))
        out("")
    out("## Plugin alone: ADD and DEL of one pod with N pods registered")
    out("")
    out("| backend | figure | N = 0 | N = 1,000 | N = 10,000 |")
    out("|---|---|---:|---:|---:|")
    plugin = r["plugin"]
    for backend, by_n in plugin.items():
        keys = []
        for n in by_n:
            for key in by_n[n]:
                if key not in keys and not key.startswith("rss"):
                    keys.append(key)
        for key in keys:
            cells = [fmt(by_n[n].get(key)) if n in by_n else "–" for n in (0, 1000, 10000)]
            out("| %s | %s | %s |" % (backend, key, " | ".join(cells)))
        rss_keys = sorted(set(k for n in by_n for k in by_n[n] if k.startswith("rss")))
        for key in rss_keys:
            cells = ["%d KiB" % by_n[n][key] if n in by_n and key in by_n[n] else "–" for n in (0, 1000, 10000)]
            out("| %s | peak RSS %s | %s |" % (backend, key[4:], " | ".join(cells)))
    out("")
    nft = plugin.get("nftables", {})
    lib_key, bin_key = "ADD, node-wide rewrite (libnftables)", "ADD, node-wide rewrite (nft binary)"
    pairs = [(n, nft[n].get(lib_key), nft[n].get(bin_key)) for n in sorted(nft)]
    pairs = [(n, a, b) for n, a, b in pairs if a and b]
    if pairs:
        out("The nftables backend sends a pod's element changes (ADD, DEL) to the kernel itself, as one nf_tables netlink "
            "batch: no libnftables, no `nft` (the iptables backend likewise sends its ipset changes over netlink). Scripts that write the node-wide rules (the network's first pod, a changed "
            "config, a restore) go through libnftables, loaded with dlopen, or the `nft` binary when it is missing. "
            "Measured on an ADD that rewrites the node-wide rules: libnftables %s against `nft -f -` %s, so libnftables "
            "is the default and the binary the fallback." % (
                ", ".join("%.2f ms (N=%d)" % (a["median"], n) for n, a, _ in pairs),
                ", ".join("%.2f ms (N=%d)" % (b["median"], n) for n, _, b in pairs)))
        out("")
    out("Peak RSS is GNU time's maximum resident set of the plugin process (including any tool it ran and waited for, "
        "such as `nft` or `ipset` on the fallback paths).")
    out("")
    out("## Whole pod through libcni (bridge + host-local [+ ip-masq])")
    out("")
    out("`ours`: bridge (ipMasq false) + host-local + ip-masq (nftables backend); `ours-iptables-nft`: the same with the "
        "iptables backend on iptables-nft; `reference`: bridge (ipMasq true, iptables-nft) + host-local; `none`: bridge "
        "(ipMasq false) + host-local and no masquerade at all, the part every variant pays. N pods' worth of existing "
        "masquerade state. Timed: the harness (Tests/cnitool, libcni) exec to exit, inside the node namespace; the "
        "variants take turns, one pod each.")
    out("")
    out("| variant | verb | N = 0 | N = 1,000 |")
    out("|---|---|---:|---:|")
    pod = r["pod"]
    for variant, by_n in pod.items():
        for verb in ("ADD", "DEL"):
            out("| %s | %s | %s |" % (variant, verb, " | ".join(fmt(by_n.get(n, {}).get(verb)) if n in by_n else "–" for n in (0, 1000))))
    out("")
    none = pod.get("none", {}).get(0)
    if none:
        lines_share = []
        for variant, by_n in pod.items():
            if variant == "none":
                continue
            for n in sorted(by_n):
                for verb in ("ADD", "DEL"):
                    lines_share.append("%s %s N=%d %+.1f ms" % (variant, verb, n, median(by_n[n][verb]) - median(none[verb])))
        out("The masquerade's own share (each median minus `none` at N=0, which is bridge + host-local + the harness): "
            + "; ".join(lines_share) + ".")
        out("")
    # Targets.
    out("## Targets (issue 7)")
    out("")
    out("| target | measured | met |")
    out("|---|---|---|")
    checks = []
    def check(name, value, limit, good, shown):
        met = value is not None and good(value, limit)
        checks.append((name, shown, met))
        out("| %s | %s | %s |" % (name, shown, "yes" if met else "**no**"))
    ours, ref = pod.get("ours", {}), pod.get("reference", {})
    for n, want in ((0, 1.5), (1000, 5.0)):
        if n in ours and n in ref:
            ratio = median(ref[n]["ADD"]) / median(ours[n]["ADD"])
            check("whole pod ADD ≥ %.1f× faster than reference, N=%d" % (want, n), ratio, want, lambda v, l: v >= l,
                  "%.2f× (%.1f vs %.1f ms)" % (ratio, median(ref[n]["ADD"]), median(ours[n]["ADD"])))
    if 1000 in ours and 1000 in ref:
        for variant in ("ours", "ours-iptables-nft"):
            if 1000 in pod.get(variant, {}):
                ratio = median(ref[1000]["DEL"]) / median(pod[variant][1000]["DEL"])
                check("whole pod DEL ≥ 2× faster than reference (iptables-nft), N=1000, %s" % variant, ratio, 2.0,
                      lambda v, l: v >= l, "%.2f× (%.1f vs %.1f ms)" % (ratio, median(ref[1000]["DEL"]), median(pod[variant][1000]["DEL"])))
    for backend, by_n in plugin.items():
        suffixes = [""]
        for suffix in suffixes:
            if 0 in by_n and 10000 in by_n:
                ratio = median(by_n[10000]["ADD" + suffix]) / median(by_n[0]["ADD" + suffix])
                check("plugin ADD at N=10,000 within 1.2× of N=0 (%s%s)" % (backend, suffix), ratio, 1.2, lambda v, l: v <= l,
                      "%.2f× (%.2f vs %.2f ms)" % (ratio, median(by_n[10000]["ADD" + suffix]), median(by_n[0]["ADD" + suffix])))
        floor_key = "nft element" if backend == "nftables" else "ipset element"
        for suffix in suffixes:
            for verb, floor_name, limit in (("ADD", "floor add: ", 2.0), ("DEL", "floor delete: ", 3.0)):
                worst = None
                for n in sorted(by_n):
                    gap = median(by_n[n][verb + suffix]) - median(by_n[n][floor_name + floor_key])
                    worst = gap if worst is None or gap > worst else worst
                check("plugin %s within %.0f ms of one `%s` (%s%s, worst N)" % (verb, limit, floor_key, backend, suffix), worst, limit,
                      lambda v, l: v <= l, "%+.2f ms" % worst)
    for backend, by_n in plugin.items():
        key = "floor: iptables-restore --noflush"
        gaps = [median(by_n[n]["ADD"]) - median(by_n[n][key]) for n in sorted(by_n) if key in by_n[n]]
        if gaps:
            check("plugin ADD within 2 ms of one `iptables-restore --noflush` (issue 4's floor; %s, worst N)" % backend,
                  max(gaps), 2.0, lambda v, l: v <= l, "%+.2f ms" % max(gaps))
    rss_values = [(backend, n, key, value) for backend, by_n in plugin.items() for n, figures in by_n.items()
                  for key, value in figures.items() if key.startswith("rss")]
    for label, chosen in (("a pod's ADD and DEL", [item for item in rss_values if "rewrite" not in item[2]]),
                          ("an ADD that rewrites the node-wide rules", [item for item in rss_values if "rewrite" in item[2]])):
        if chosen:
            backend, n, key, value = max(chosen, key=lambda item: item[3])
            check("plugin peak RSS ≤ 8 MiB, %s (largest: %s %s, N=%d)" % (label, backend, key[4:], n), value, 8192,
                  lambda v, l: v <= l, "%.2f MiB" % (value / 1024))
    if floor:
        gap = median(floor["ip-masq VERSION"]) - median(floor["/bin/true"])
        check("start-up (VERSION) within 1.5 ms of /bin/true", gap, 1.5, lambda v, l: v <= l, "%+.2f ms" % gap)
    out("")
    out("## Notes")
    out("")
    out("- Pre-registered pods are written in bulk from a template: one pod is registered for real, its records and "
        "netfilter entries are copied N times (container ID and address replaced), a CHECK of one copy through the plugin "
        "must pass, and the template pod is deleted for real; after the runs exactly N pods must be left. For the "
        "reference, its per-pod chain and POSTROUTING jump (read back from a real ADD through libcni) are copied the same "
        "way with one `iptables-restore --noflush`.")
    out("- Any nf_tables transaction that deletes something waits in the kernel (here ~10–15 ms): the nftables DEL and "
        "its floor both pay it; ipset deletions do not.")
    own = [(backend, n, figures.get("DEL, nothing registered (lock, records)")) for backend, by_n in plugin.items()
           for n, figures in sorted(by_n.items())]
    own = [(backend, n, summary) for backend, n, summary in own if summary]
    if own:
        out("- The plugin's own cost without netfilter work (a DEL of a pod that was never registered: start-up, config, "
            "lock, record lookup): " + ", ".join("%s N=%d %.2f ms" % (backend, n, summary["median"]) for backend, n, summary in own)
            + ". Both backends send a pod's element changes over netlink from the plugin's own process (no `nft`, "
            "`ipset` or libnftables), so an ADD costs this plus one netlink exchange: it beats the `nft` floor, which "
            "loads libnftables, but stays above the `ipset` floor, a small C program that starts in ~1 ms.")
    out("- The machine is shared: the load average below says how busy it was; medians are robust to the spikes, "
        "the maxima are not.")
    out("")
    out("Load average (1 min) at the start of each scenario: " + ", ".join("%s %s" % item for item in r["noise"]) + ".")
    out("")
    out("![latency against N](latency.svg)")
    out("")
    return "\n".join(lines) + "\n", checks


def nice_step(top):
    """A round tick step giving 4 to 8 ticks up to `top`."""
    step = 10 ** (len(str(int(max(top, 1)))) - 1)
    while top / step < 4:
        step /= 2
    while top / step > 8:
        step *= 2
    return step


def write_report(out, text, bench):
    """Writes results.md and latency.svg into `out` (nothing when no directory was asked for)."""
    if not out:
        return
    with open(os.path.join(out, "results.md"), "w") as handle:
        handle.write(text)
    with open(os.path.join(out, "latency.svg"), "w") as handle:
        handle.write(svg_plot(bench))
    log("wrote %s/results.md and %s/latency.svg" % (out, out))


def svg_plot(bench):
    """Median latency against N, one panel per verb: plugin alone with its floors, and whole pod through libcni."""
    plugin, pod = bench.results["plugin"], bench.results["pod"]
    colors = {"nftables": "#1f77b4", "iptables-nft": "#ff7f0e", "none": "#7f7f7f",
              "iptables-legacy": "#2ca02c", "ours": "#1f77b4", "ours-iptables-nft": "#ff7f0e", "reference": "#d62728"}
    floor_colors = ["#555555", "#999999", "#bbbbbb"]
    panels = []
    for verb, floor_word in (("ADD", "add"), ("DEL", "delete")):
        series = []
        for backend, by_n in plugin.items():
            if any(verb in by_n[n] for n in by_n):
                series.append((backend, {n: by_n[n].get(verb) for n in by_n}, colors.get(backend, "#000"), False))

        floors = []
        for backend, by_n in plugin.items():
            for key in sorted({k for n in by_n for k in by_n[n] if k.startswith("floor %s: " % floor_word)}):
                label = "floor: %s %s element" % (key.split(": ")[1].replace(" element", ""), floor_word)
                if any(f[0] == label for f in floors):
                    continue
                floors.append((label, {n: by_n[n].get(key) for n in by_n}))
        series += [(label, values, floor_colors[i % 3], True) for i, (label, values) in enumerate(floors)]
        panels.append(("Plugin alone: %s" % verb, [(0, "0"), (1000, "1,000"), (10000, "10,000")], series))
    for verb in ("ADD", "DEL"):
        series = [(variant, {n: by_n[n].get(verb) for n in by_n}, colors.get(variant, "#000"), variant == "reference")
                  for variant, by_n in pod.items()]
        panels.append(("Whole pod through libcni: %s" % verb, [(0, "0"), (1000, "1,000")], series))
    rewrite = []
    for label, color in (("libnftables", "#17becf"), ("nft -f - (fallback)", "#9467bd")):
        key = "ADD, node-wide rewrite (%s)" % label.replace("nft -f - (fallback)", "nft binary")
        by_n = plugin.get("nftables", {})
        if any(key in by_n[n] for n in by_n):
            rewrite.append((label, {n: by_n[n].get(key) for n in by_n}, color, False))
    panels.append(("nftables ADD that rewrites the node-wide rules", [(0, "0"), (1000, "1,000"), (10000, "10,000")], rewrite))
    panels = [panel for panel in panels if panel[2]]
    columns = 2
    panel_w, panel_h = 480, 330
    rows = (len(panels) + columns - 1) // columns
    width, height = panel_w * columns, panel_h * rows + 30
    parts = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="11">'
             % (width, height, width, height), '<rect width="100%" height="100%" fill="white"/>']
    for index, (title, xs, series) in enumerate(panels):
        left = (index % columns) * panel_w + 60
        top = (index // columns) * panel_h + 36
        plot_w, plot_h = panel_w - 85, 170
        values = [summary["median"] for _, by_n, _, _ in series for summary in by_n.values() if summary]
        step = nice_step(max(values) * 1.05 if values else 1)
        ticks = int((max(values) * 1.05 if values else 1) / step) + 1
        top_value = ticks * step
        def y_of(value):
            return top + plot_h - plot_h * value / top_value
        parts.append('<text x="%d" y="%d" font-size="13" font-weight="bold">%s</text>' % (left, top - 14, title))
        for tick in range(ticks + 1):
            y = y_of(tick * step)
            parts.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#e4e4e4"/>' % (left, y, left + plot_w, y))
            parts.append('<text x="%d" y="%.1f" text-anchor="end">%g</text>' % (left - 5, y + 4, tick * step))
        parts.append('<text x="%d" y="%d" transform="rotate(-90 %d %d)" text-anchor="middle">ms (median)</text>'
                     % (left - 42, top + plot_h // 2, left - 42, top + plot_h // 2))
        positions = {n: left + plot_w * (i + 0.5) / len(xs) for i, (n, _) in enumerate(xs)}
        for n, label in xs:
            parts.append('<text x="%.1f" y="%d" text-anchor="middle">N = %s</text>' % (positions[n], top + plot_h + 15, label))
        parts.append('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#444"/>' % (left, top, plot_w, plot_h))
        for number, (name, by_n, color, dashed) in enumerate(series):
            dash = ' stroke-dasharray="5 3"' if dashed else ""
            points = [(positions[n], by_n[n]) for n, _ in xs if by_n.get(n)]
            if len(points) > 1:
                parts.append('<polyline fill="none" stroke="%s" stroke-width="2"%s points="%s"/>'
                             % (color, dash, " ".join("%.1f,%.1f" % (x, y_of(summary["median"])) for x, summary in points)))
            for x, summary in points:
                parts.append('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-opacity="0.35" stroke-width="3"/>'
                             % (x, y_of(summary["min"]), x, y_of(min(summary["max"], top_value)), color))
                parts.append('<circle cx="%.1f" cy="%.1f" r="3" fill="%s"><title>%s: median %.2f ms (min %.2f, max %.2f)</title></circle>'
                             % (x, y_of(summary["median"]), color, name, summary["median"], summary["min"], summary["max"]))
            legend_y = top + plot_h + 32 + 14 * (number // 2)
            legend_x = left + (number % 2) * plot_w / 2
            parts.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="%s" stroke-width="2"%s/>'
                         % (legend_x, legend_y - 4, legend_x + 18, legend_y - 4, color, dash))
            parts.append('<text x="%.1f" y="%d">%s</text>' % (legend_x + 22, legend_y, name.replace("&", "&amp;").replace("<", "&lt;")))
    parts.append('<text x="10" y="%d" fill="#666">Exec to exit, medians; the faint bars span min to max. Dashed: floors and the reference plugin. '
                 'Generated by Tests/Bench/bench.py.</text>' % (height - 10))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def render(args):
    """Writes results.md and latency.svg again from the raw figures of an earlier run."""
    raw = json.load(open(args.render))
    raw["noise"] = [tuple(item) for item in raw.get("noise", [])]
    for section in ("plugin", "pod"):
        raw[section] = {name: {int(n): figures for n, figures in by_n.items()} for name, by_n in raw[section].items()}
    rendered = argparse.Namespace(results=raw, machine=[tuple(item) for item in raw.get("machine", [])],
                                  runs=raw.get("runs", 0), pod_runs=raw.get("pod_runs", 0))
    text, _ = report(rendered, args, raw.get("elapsed", 0))
    print(text)
    write_report(args.out, text, rendered)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plugin", required=True, help="the release ip-masq binary")
    parser.add_argument("--cnitool", required=True, help="the libcni harness (Tests/cnitool)")
    parser.add_argument("--reference-plugins", default="/usr/lib/cni", help="directory of the reference CNI plugins")
    parser.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", "40")), help="runs per plugin figure (BENCH_RUNS)")
    parser.add_argument("--pod-runs", type=int, default=int(os.environ.get("BENCH_POD_RUNS") or "0") or None,
                        help="runs per whole-pod figure (BENCH_POD_RUNS; default: BENCH_RUNS, at least 8)")
    parser.add_argument("--out", default=None, help="directory for results.md and latency.svg (default: print only)")
    parser.add_argument("--json", default=None, help="also write the raw figures here")
    parser.add_argument("--only", default="", help="comma-separated subset: startup,plugin,pod")
    parser.add_argument("--backends", default="nftables,iptables-nft,iptables-legacy")
    parser.add_argument("--counts", default="0,1000,10000")
    parser.add_argument("--render", default=None, help="only write the report and plot again from a --json file")
    args = parser.parse_args()
    if args.render:
        render(args)
        return
    if args.pod_runs is None:
        args.pod_runs = max(8, args.runs)
    if os.geteuid() != 0:
        sys.exit("bench: needs root (network namespaces and netfilter)")
    only = set(filter(None, args.only.split(",")))
    bench = Bench(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("bench: terminated"))
    started = time.time()
    try:
        bench.results["machine"] = machine(bench)
        if not only or "startup" in only:
            log("start-up: /bin/true and ip-masq VERSION")
            bench.start_up()
        counts = [int(c) for c in args.counts.split(",")]
        if not only or "plugin" in only:
            bench.plugin_alone([b for b in args.backends.split(",") if b], counts)
        if not only or "pod" in only:
            bench.whole_pod(["ours", "ours-iptables-nft", "reference", "none"], [c for c in counts if c <= 1000])
    finally:
        bench.close()
    elapsed = time.time() - started
    bench.results.update(runs=bench.runs, pod_runs=bench.pod_runs, elapsed=elapsed)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(bench.results, handle, indent=1)
    if bench.results["floor"] or bench.results["plugin"] or bench.results["pod"]:
        text, checks = report(bench, args, elapsed)
        print(text)
        write_report(args.out, text, bench)


if __name__ == "__main__":
    main()
