"""The image tier: the DaemonSet's pod (cni-conf/ip-masq-daemonset.yaml) from the built image, run by containerd.

    python3 Tests/Image/test_image.py --image .build/image/ip-masq.tar [--rootfs .build/image/rootfs] [--only nft]

Root only. Per backend, one throwaway node (network namespaces; containerd in a private mount namespace that has
the test's directories at /etc/cni, /opt and /run, see kubelet.py), the image imported with `ctr images import`
(containerd's digest must be the archive's manifest), and these steps in order, each printed as ok/FAIL with its time:
  install   the init container installs: the binary arrives in the bin dir by one rename (inotify) with the
            image's bytes, the conflist gains the ip-masq entry (also by rename), the config copy and the
            agent's netconf exist; then the agent container starts and its liveness probe passes
  traffic   a pod created afterwards: real TCP to a non-masquerade and a masquerade destination
  edit      the ConfigMap edited (kubelet-style atomic swap): the rules follow within one resyncInterval,
            for the existing pod and a new one (real packets)
  flush     `nft flush ruleset` in the node namespace (iptables-legacy: the nat table flushed): repaired by the
            agent within one resyncInterval, traffic as before
  liveness  (nftables only) the agent stopped (SIGSTOP): the probe fails once passes are overdue, and passes
            again after SIGCONT
  uninstall the documented order: the pod deleted (SIGTERM ends the agent cleanly within the grace period),
            the image's `install --uninstall` (original conflist back, byte for byte; config copy and netconf
            gone), `ip-masq reset` on the node: no netfilter object, no record left
  reinstall stale temporaries of an interrupted install in the bin and conf dirs: the pod installs again and a
            new pod is masqueraded as configured
Before them: `archive` reads the archive back (OCI layout, both names in index.json, digests, sorted entries owned
by 0:0 with one mtime, no gzip timestamp, no shell) and `podman load` loads it (both names; the default command
and nft, iptables, ipset run in a read-only container with only NET_ADMIN and NET_RAW).
The last line is `image: N passed, N failed`.
"""
import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import kubelet  # noqa: E402
from kubelet import cn  # noqa: E402
import ociimage  # noqa: E402  (the runtime tier's busybox image: sandbox and workload)
import podman_node  # noqa: E402

REPO = os.path.dirname(os.path.dirname(HERE))
MANIFEST = os.path.join(REPO, 'cni-conf', 'ip-masq-daemonset.yaml')
NETWORK = f'imgnet{os.getpid() % 100000}'
CONFLIST_NAME = '10-podnet.conflist'
RESYNC = 3  # seconds: the test's ConfigMap sets resyncInterval to this
SLACK = 6   # seconds beyond one interval: a loaded 2-core machine, the pass itself (bounded, not timed)


class Failure(AssertionError):
    pass


def expect(cond, message):
    if not cond:
        raise Failure(message)


def wait_for(what, predicate, timeout, interval=0.1):
    """Polls until predicate() is truthy; returns (value, seconds). Fails after `timeout` s."""
    start = time.monotonic()
    while True:
        value = predicate()
        if value:
            return value, time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise Failure(f'{what}: not within {timeout:.0f} s')
        time.sleep(interval)


def sha256(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def original_conflist(dirs):
    """The node's network config before install: a real bridge conflist (ipMasq off)."""
    plugins = [{'type': 'bridge', 'bridge': 'cni0', 'isGateway': True, 'ipMasq': False,
                'ipam': {'type': 'host-local', 'ranges': [[{'subnet': '10.244.1.0/24'}]],
                         'routes': [{'dst': '0.0.0.0/0'}], 'dataDir': os.path.join(dirs.tmp, 'ipam')}},
               {'type': 'portmap', 'capabilities': {'portMappings': True}}]
    return json.dumps({'cniVersion': '1.0.0', 'name': NETWORK, 'plugins': plugins}, indent=2) + '\n'


def configmap_text(cidrs):
    return 'nonMasqueradeCIDRs:\n' + ''.join(f'  - {c}\n' for c in cidrs) + \
        f'masqLinkLocal: false\nresyncInterval: {RESYNC}s\n'


class ImageNode:
    """One backend's node: world, dirs, containerd with both images, the DaemonSet pod, workload pods."""

    def __init__(self, backend, image_archive, bb_archive, names, manifest_digest):
        self.backend = backend
        self.tmp = tempfile.mkdtemp(prefix='ipmimg-')
        self.world = cn.World('im' + backend[:4], ipv6=False)
        self.dirs = kubelet.NodeDirs(self.tmp)
        self.manifest = kubelet.Manifest(MANIFEST)
        self.image = self.manifest.install['image']
        self.pods = []
        self.ds = None
        self.cd = kubelet.NodeContainerd(self.world.node, self.tmp, self.dirs)
        try:
            # The node before the DaemonSet: reference plugins in /opt/cni/bin, the bridge conflist in net.d.
            self.cd.link_cni_plugins(plugins=('loopback', 'bridge', 'host-local', 'portmap'))
            self.bin_dir = self.dirs.node('/opt/cni/bin')
            self.conf_dir = self.dirs.node('/etc/cni/net.d')
            self.original = original_conflist(self.dirs)
            self.cd.write_conflist(self.original, CONFLIST_NAME)
            self.original_bin = sorted(os.listdir(self.bin_dir))
            self.cd.start()
            self.cd.import_image(bb_archive)
            self.cd.import_image(image_archive)
            rows = [line.split() for line in
                    cn.sh('ctr', '--address', self.cd.sock, '-n', 'k8s.io', 'images', 'ls').stdout.splitlines()[1:]]
            listed = [r[0] for r in rows]
            expect(all(n in listed for n in names), f'imported names {listed}, wanted {names}')
            digests = {r[2] for r in rows if r[0] in names}
            expect(digests == {manifest_digest}, f'containerd holds {digests}, the archive\'s manifest is {manifest_digest}')
            expect(self.image in listed, f'the manifest\'s image {self.image} is not among {listed}')
            self.configmap = self.dirs.configmap_volume('config', {'config': configmap_text(
                ['10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16'])})
            self.heartbeat = self.dirs.empty_dir('heartbeat')
            self.world.serve()
        except BaseException:
            self.close()
            raise

    # -- the DaemonSet pod ---------------------------------------------------------------------------------------
    def install_command(self):
        """The manifest's install command, with the backend pinned as the README says for iptables nodes."""
        extra = {'nftables': [], 'iptables': ['--backend', 'iptables'],
                 'iptables-legacy': ['--backend', 'iptables', '--iptables-mode', 'legacy']}[self.backend]
        return self.manifest.install['command'] + extra

    def run_daemonset(self, attempt=0):
        self.ds = kubelet.DaemonSetPod(self.cd, self.manifest, self.dirs, self.image, self.configmap,
                                       self.heartbeat, attempt=attempt, install_command=self.install_command())
        return self.ds

    def node_path(self, manifest_arg_option, container=None):
        """The test's path of a node file named by an install option (e.g. --host-config-file)."""
        command = (container or self.manifest.install)['command']
        return self.dirs.node(command[command.index(manifest_arg_option) + 1])

    # -- workload pods -------------------------------------------------------------------------------------------
    def new_pod(self, name):
        pod, ctr, _ = self.cd.run_pod(name)
        self.pods.append(pod)
        return pod, ctr

    def registered(self):
        r = self.cd.on_node('/opt/cni/bin/ip-masq', 'list', '--json', check=False)
        if r.returncode != 0:
            return []
        for net in json.loads(r.stdout).get('networks', []):
            if net['name'] == NETWORK:
                return [p['containerID'] for p in net['pods']]
        return []

    def masq_pod(self, name):
        """A pod created once containerd has reloaded the edited conflist (it reloads on inotify): retried until
        ip-masq registered it."""
        for attempt in range(20):
            pod, ctr = self.new_pod(f'{name}-{attempt}')
            if pod in self.registered():
                return pod, ctr
            time.sleep(0.3)
        raise Failure('no pod was registered by ip-masq: containerd did not load the edited conflist')

    def traffic(self, pod, ctr, masqueraded):
        """Real TCP from the pod to both hosts: each sees the pod's address, or the node's when masqueraded."""
        ip = self.cd.pod_ips(pod)[0]
        w = self.world
        node_addr = {w.INTERNET4: w.NODE_INTERNET4, w.PRIVATE4: '192.168.77.1'}
        for dst in (w.INTERNET4, w.PRIVATE4):
            seen = cn.seen_from(self.cd, ctr, dst)
            want = node_addr[dst] if dst in masqueraded else ip
            expect(seen == want, f'{dst} saw {seen} from pod {ip}, wanted {want}'
                   f' ({"masqueraded" if dst in masqueraded else "not masqueraded"})')

    def rules_text(self):
        if self.backend == 'nftables':
            return self.world.node.run('nft', 'list', 'table', 'inet', 'ip_masq', check=False).stdout
        tool = 'iptables-legacy-save' if self.backend == 'iptables-legacy' else 'iptables-nft-save'
        return self.world.node.run(tool, '-t', 'nat', check=False).stdout

    def netfilter_traces(self):
        """Every ip-masq object in the node's netfilter (nftables table, iptables chains/jumps, ipsets)."""
        n = self.world.node
        found = []
        nft = n.run('nft', 'list', 'ruleset', check=False).stdout
        found += [line.strip() for line in nft.splitlines() if 'ip_masq' in line or 'IP-MASQ' in line]
        for tool in ('iptables-legacy-save', 'iptables-nft-save'):
            found += [f'{tool}: {line}' for line in n.run(tool, check=False).stdout.splitlines()
                      if 'IP-MASQ' in line or 'IPMASQ' in line]
        found += [f'ipset: {s}' for s in n.run('ipset', 'list', '-n', check=False).stdout.split() if 'IPMASQ' in s]
        return found

    def close(self):
        try:
            for pod in self.pods:
                try:
                    self.cd.remove_pod(pod)
                except Exception:  # noqa: BLE001
                    pass
            self.cd.close()
        finally:
            self.world.close()
            left = cn.leftovers(self.tmp, self.cd.networks)
            shutil.rmtree(self.tmp, ignore_errors=True)
            if left:
                raise Failure(f'left behind: {left}')


# --- the steps ----------------------------------------------------------------------------------------------------


def step_install(node, rootfs):
    watch = kubelet.DirWatch(node.bin_dir, node.conf_dir)
    try:
        ds = node.run_daemonset()
        st = ds.install_status
        expect(st['exit_code'] == 0, f'install exited {st["exit_code"]}: {st["log"]}')
        binary = os.path.join(node.bin_dir, 'ip-masq')
        expect(sha256(binary) == sha256(os.path.join(rootfs, 'ip-masq')), 'the bin dir\'s ip-masq differs from the image\'s')
        expect(os.stat(binary).st_mode & 0o777 == 0o755, f'mode {oct(os.stat(binary).st_mode)}')
        events = watch.of(node.bin_dir, 'ip-masq')
        expect(events == ['MOVED_TO'], f'ip-masq appeared in the bin dir by {events}, not by one rename')
        events = watch.of(node.conf_dir, CONFLIST_NAME)
        expect(events == ['MOVED_TO'], f'the conflist was rewritten by {events}, not by one rename')
    finally:
        watch.close()
    with open(os.path.join(node.conf_dir, CONFLIST_NAME)) as f:
        edited = json.load(f)
    entry = edited['plugins'][-1]
    host_config = node.manifest.install['command'][node.manifest.install['command'].index('--host-config-file') + 1]
    expect(entry.get('type') == 'ip-masq' and entry.get('configFile') == host_config, f'entry {entry}')
    expect([p['type'] for p in edited['plugins']] == ['bridge', 'portmap', 'ip-masq'], f'plugins {edited["plugins"]}')
    if node.backend != 'nftables':
        expect(entry.get('backend') == 'iptables', f'--backend iptables is not in the entry: {entry}')
    with open(os.path.join(node.conf_dir, CONFLIST_NAME + '.ip-masq.bak')) as f:
        expect(f.read() == node.original, 'the backup is not the original conflist')
    with open(node.node_path('--host-config-file')) as f, open(os.path.join(node.configmap, 'config')) as g:
        expect(f.read() == g.read(), 'the node\'s config copy differs from the ConfigMap')
    with open(node.node_path('--agent-netconf')) as f:
        netconf = json.load(f)
    expect(netconf.get('name') == NETWORK and netconf.get('type') == 'ip-masq', f'agent netconf {netconf}')
    leftovers = [n for n in os.listdir(node.bin_dir) + os.listdir(node.conf_dir) if n.endswith('.tmp')]
    expect(not leftovers, f'temporary files left: {leftovers}')

    ds.start_agent()
    beat = os.path.join(node.heartbeat, 'heartbeat')
    def beating():
        state = node.cd.client.container_status(ds.agent_id)
        if state['state'] != 'RUNNING':
            raise Failure(f'the agent is {state["state"]} (exit {state["exit_code"]}): {ds.log("agent.log")[-3:]}')
        return os.path.exists(beat)
    wait_for('the agent\'s first heartbeat', beating, 30)
    probe = ds.probe()
    expect(probe['exit_code'] == 0, f'liveness probe failed: {probe}')
    limit = memory_limit(node.cd.container_pid(ds.agent_id))
    want_limit = kubelet.quantity_bytes(node.manifest.agent['resources']['limits']['memory'])
    expect(limit == want_limit, f'the agent\'s memory limit is {limit}, the manifest says {want_limit}')
    caps = capabilities(node.cd.container_pid(ds.agent_id))
    expect(caps == {'cap_net_admin', 'cap_net_raw'}, f'the agent runs with {sorted(caps)}')
    want = 'nftables' if node.backend == 'nftables' else 'iptables'
    wait_for('the agent\'s backend line', lambda: any(f'backend in use: {want}' in line for line in ds.log('agent.log')), 10)
    return (f'{len(ds.install_status["log"])} install lines; agent: memory limit {limit >> 20} MiB, {"+".join(sorted(caps))};'
            f' probe: {probe["stdout"].decode().strip()}')


def memory_limit(pid):
    """The memory limit of a process's cgroup (v1 memory controller or v2 memory.max), in bytes."""
    with open(f'/proc/{pid}/cgroup') as f:
        lines = [line.rstrip('\n').split(':', 2) for line in f]
    for _, controllers, path in lines:
        if 'memory' in controllers.split(','):
            with open(f'/sys/fs/cgroup/memory{path}/memory.limit_in_bytes') as g:
                return int(g.read())
    path = next(p for _, c, p in lines if c == '')
    with open(f'/sys/fs/cgroup{path}/memory.max') as g:
        text = g.read().strip()
    return None if text == 'max' else int(text)


CAPABILITY_NAMES = ['chown', 'dac_override', 'dac_read_search', 'fowner', 'fsetid', 'kill', 'setgid', 'setuid',
                    'setpcap', 'linux_immutable', 'net_bind_service', 'net_broadcast', 'net_admin', 'net_raw']


def capabilities(pid):
    """The effective capabilities of a process, by name (the first 14 named; others as numbers)."""
    with open(f'/proc/{pid}/status') as f:
        bits = int(next(line.split()[1] for line in f if line.startswith('CapEff:')), 16)
    return {('cap_' + CAPABILITY_NAMES[i]) if i < len(CAPABILITY_NAMES) else f'cap_{i}'
            for i in range(64) if bits >> i & 1}


def step_traffic(node):
    pod, ctr = node.masq_pod('web')
    node.first = (pod, ctr)
    node.traffic(pod, ctr, masqueraded={node.world.INTERNET4})
    return 'internet saw the node, 192.168.77.2 saw the pod'


def step_edit(node):
    new = configmap_text(['10.0.0.0/8', '203.0.113.0/24'])
    kubelet.NodeDirs.write_configmap(node.configmap, {'config': new})
    _, took = wait_for('the edited ConfigMap in the rules', lambda: '203.0.113.0/24' in node.rules_text(),
                       RESYNC + SLACK)
    with open(node.node_path('--host-config-file')) as f:
        expect(f.read() == new, 'the node\'s copy was not updated')
    pod, ctr = node.first
    node.traffic(pod, ctr, masqueraded={node.world.PRIVATE4})
    pod2, ctr2 = node.masq_pod('web2')
    node.traffic(pod2, ctr2, masqueraded={node.world.PRIVATE4})
    return f'rules changed {took:.1f} s after the edit (resyncInterval {RESYNC}s); existing and new pod follow'


def step_flush(node):
    if node.backend == 'iptables-legacy':
        node.world.node.run('iptables-legacy', '-t', 'nat', '-F')
        node.world.node.run('iptables-legacy', '-t', 'nat', '-X')
        what = 'iptables-legacy -t nat -F/-X'
    else:
        node.world.node.run('nft', 'flush', 'ruleset')
        what = 'nft flush ruleset'
    expect('203.0.113.0/24' not in node.rules_text(), 'the flush left the rules')
    _, took = wait_for('the repair', lambda: '203.0.113.0/24' in node.rules_text(), RESYNC + SLACK)
    pod, ctr = node.first
    node.traffic(pod, ctr, masqueraded={node.world.PRIVATE4})
    return f'{what}: repaired {took:.1f} s later; traffic as configured'


def step_liveness(node):
    ds = node.ds
    pid = node.cd.container_pid(ds.agent_id)
    os.kill(pid, signal.SIGSTOP)
    try:
        limit = 2 * RESYNC + 10
        probe, took = wait_for('the probe to fail', lambda: (lambda p: p if p['exit_code'] != 0 else None)(ds.probe()),
                               limit + SLACK, interval=1)
        expect(took >= limit - RESYNC - 1, f'the probe failed after {took:.1f} s, before passes were overdue')
    finally:
        os.kill(pid, signal.SIGCONT)
    _, back = wait_for('the probe to pass again', lambda: ds.probe()['exit_code'] == 0, RESYNC + SLACK, interval=0.5)
    return f'failed {took:.0f} s after SIGSTOP ({probe["stdout"].decode().strip()}); passes {back:.1f} s after SIGCONT'


def uninstall_with_image(node, attempt):
    """The image run with the install container's arguments plus --uninstall, and its mounts."""
    helper = kubelet.DaemonSetPod(node.cd, node.manifest, node.dirs, node.image, node.configmap, node.heartbeat,
                                  attempt=attempt, install_command=node.install_command() + ['--uninstall'])
    helper.stop()
    return helper.install_status


def step_uninstall(node):
    ds = node.ds
    # 1. the DaemonSet deleted: SIGTERM, the agent ends within the grace period, exit status 0.
    elapsed, status = ds.stop()
    expect(status['exit_code'] == 0, f'the agent exited {status["exit_code"]} ({status["reason"]})')
    expect(elapsed < node.manifest.grace, f'the agent took {elapsed:.1f} s, the grace period is {node.manifest.grace} s')
    log = ds.log('agent.log')
    expect(any('agent stopping on SIGTERM' in line for line in log), f'no stop line in the agent log: {log[-3:]}')
    # 2. the image's install --uninstall: the original conflist back, the node's config copy and netconf gone.
    st = uninstall_with_image(node, attempt=50)
    expect(st['exit_code'] == 0, f'install --uninstall exited {st["exit_code"]}: {st["log"]}')
    with open(os.path.join(node.conf_dir, CONFLIST_NAME)) as f:
        expect(f.read() == node.original, 'the conflist is not the original after --uninstall')
    expect(sorted(os.listdir(node.conf_dir)) == [CONFLIST_NAME], f'conf dir: {os.listdir(node.conf_dir)}')
    for option in ('--host-config-file', '--agent-netconf'):
        expect(not os.path.exists(node.node_path(option)), f'{option} file left')
    # 3. ip-masq reset on the node, then the binary removed.
    out = node.cd.on_node('/opt/cni/bin/ip-masq', 'reset').stdout.strip()
    os.unlink(os.path.join(node.bin_dir, 'ip-masq'))
    traces = node.netfilter_traces()
    expect(not traces, f'netfilter traces after reset: {traces}')
    state = node.dirs.node('/run/cni/ip-masq')
    records = [os.path.relpath(os.path.join(d, f), state) for d, _, fs in os.walk(state) for f in fs] \
        if os.path.isdir(state) else []
    expect(not records, f'records left after reset: {records}')
    run_cni = node.dirs.node('/run/cni')
    remaining = sorted(os.path.relpath(os.path.join(d, n), run_cni) for d, ds, fs in os.walk(run_cni) for n in ds + fs)
    expect(sorted(os.listdir(node.bin_dir)) == node.original_bin, f'bin dir {os.listdir(node.bin_dir)}')
    # The pods created meanwhile are deleted with the original conflist: no ip-masq call any more.
    for pod in list(node.pods):
        node.cd.remove_pod(pod)
        node.pods.remove(pod)
    expect(not node.netfilter_traces(), f'traces after the pods went: {node.netfilter_traces()}')
    return (f'agent stopped in {elapsed:.2f} s (grace {node.manifest.grace} s), exit 0; reset: {out.splitlines()[0]};'
            f' /run/cni holds {remaining or "nothing"}')


def step_reinstall(node, rootfs):
    # An install killed between its write and its rename leaves its temporary (PID 1 in the init container).
    for d in (node.bin_dir, node.conf_dir):
        with open(os.path.join(d, '.ip-masq-install.1.tmp'), 'wb') as f:
            f.write(b'\x7fELF half-written')
    ds = node.run_daemonset(attempt=1)
    st = ds.install_status
    expect(st['exit_code'] == 0, f'install over stale temporaries exited {st["exit_code"]}: {st["log"]}')
    expect(sha256(os.path.join(node.bin_dir, 'ip-masq')) == sha256(os.path.join(rootfs, 'ip-masq')), 'binary differs')
    stale = [n for n in os.listdir(node.bin_dir) + os.listdir(node.conf_dir) if n.endswith('.tmp')]
    expect(not stale, f'temporaries left: {stale}')
    ds.start_agent()
    pod, ctr = node.masq_pod('again')
    node.traffic(pod, ctr, masqueraded={node.world.PRIVATE4})
    # Leave as found: stop, uninstall, reset.
    ds.stop()
    expect(uninstall_with_image(node, attempt=51)['exit_code'] == 0, 'the second uninstall failed')
    for pod in list(node.pods):
        node.cd.remove_pod(pod)
        node.pods.remove(pod)
    node.cd.on_node('/opt/cni/bin/ip-masq', 'reset')
    expect(not node.netfilter_traces(), f'traces: {node.netfilter_traces()}')
    return 'installed over .ip-masq-install.1.tmp in both dirs; a new pod follows the ConfigMap'


def check_archive(args, names, digest):
    """The archive's OCI layout and the layer's reproducibility properties, read back with tarfile."""
    import gzip
    import io
    import tarfile
    with tarfile.open(args.image) as outer:
        members = {m.name: m for m in outer.getmembers()}
        read = lambda name: outer.extractfile(members[name]).read()  # noqa: E731
        expect(json.loads(read('oci-layout')) == {'imageLayoutVersion': '1.0.0'}, 'oci-layout')
        index = json.loads(read('index.json'))
        refs = [(m['annotations']['io.containerd.image.name'], m['annotations']['org.opencontainers.image.ref.name'],
                 m['digest']) for m in index['manifests']]
        expect(refs == [(n, n, digest) for n in names], f'index.json entries {refs}')
        manifest_bytes = read('blobs/sha256/' + digest[7:])
        expect('sha256:' + hashlib.sha256(manifest_bytes).hexdigest() == digest, 'manifest blob digest')
        manifest = json.loads(manifest_bytes)
        config = json.loads(read('blobs/sha256/' + manifest['config']['digest'][7:]))
        layer_gz = read('blobs/sha256/' + manifest['layers'][0]['digest'][7:])
        expect(layer_gz[4:8] == b'\0\0\0\0', 'the gzip header carries a timestamp')
        layer = gzip.decompress(layer_gz)
        expect('sha256:' + hashlib.sha256(layer).hexdigest() == config['rootfs']['diff_ids'][0], 'diff_id')
        expect(config['config']['Entrypoint'] == ['/ip-masq'], f'entrypoint {config["config"]}')
        epochs = {m.mtime for m in outer.getmembers()}
    with tarfile.open(fileobj=io.BytesIO(layer)) as inner:
        entries = inner.getmembers()
    names_in_layer = [m.name.rstrip('/') for m in entries]
    expect(names_in_layer == sorted(names_in_layer), 'layer entries are not sorted')
    expect({(m.uid, m.gid, m.uname, m.gname) for m in entries} == {(0, 0, '', '')}, 'owners are not 0:0')
    epochs |= {m.mtime for m in entries}
    expect(len(epochs) == 1, f'more than one mtime: {sorted(epochs)[:5]}')
    by_name = {m.name.rstrip('/'): m for m in entries}
    expect(by_name['ip-masq'].mode == 0o755 and by_name['ip-masq'].isfile(), '/ip-masq')
    shells = [n for n in ('bin/sh', 'bin/bash', 'usr/bin/sh', 'bin/dash') if n in by_name]
    expect(not shells, f'shells in the image: {shells}')
    return (f'{len(entries)} entries, sorted, 0:0, every mtime {time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epochs.pop()))};'
            f' {len(layer) / 1e6:.1f} MB uncompressed; no shell')


def check_podman(args, names):
    """`podman load` names the image both ways; its default command and the tools run in a read-only container with
    only NET_ADMIN and NET_RAW, in the container's own network namespace."""
    netns = cn.Netns('impm')
    tmp = tempfile.mkdtemp(prefix='ipmimg-pm-')
    pm = podman_node.Podman(netns, tmp)
    try:
        out = pm.podman('load', '-i', args.image).stdout
        listed = pm.podman('images', '--format', '{{.Repository}}:{{.Tag}}').stdout.split()
        expect(sorted(listed) == sorted(names), f'podman load gave {listed} ({out.strip()}), wanted {names}')
        run = ['run', '--rm', '--network', 'none', '--read-only', '--cap-drop', 'all', '--cap-add', 'NET_ADMIN,NET_RAW']
        version = pm.podman(*run, names[0]).stdout.strip()
        expect(version.startswith('ip-masq ' + names[0].rsplit(':', 1)[1]), f'default command printed {version!r}')
        for tool in (['/usr/sbin/nft', 'list', 'ruleset'], ['/usr/sbin/iptables-legacy-save'], ['/usr/sbin/iptables-save'],
                     ['/usr/sbin/ip6tables-nft-restore', '--version'], ['/usr/sbin/ipset', 'list', '-n']):
            r = pm.podman(*run, '--entrypoint', tool[0], names[1], *tool[1:], check=False)
            expect(r.returncode == 0, f'{" ".join(tool)} in the image: exit {r.returncode}: {r.stderr.strip()}')
        shell = pm.podman(*run, '--entrypoint', '/bin/sh', names[1], '-c', 'true', check=False)
        expect(shell.returncode != 0, 'the image has a shell')
        return f'{", ".join(listed)}; {version}; nft, iptables (both), ipset run; no /bin/sh'
    finally:
        # conmon runs `podman container cleanup` after each --rm container, in the background; that process
        # opens the storage again (and its overlay mount): wait for it before cleaning up.
        deadline = time.monotonic() + 30
        while cn._pids_with_arg(tmp) and time.monotonic() < deadline:
            time.sleep(0.1)
        try:
            pm.close()
        finally:
            netns.close()
            left = podman_node.leftovers(tmp)
            cn.unmount_under(tmp)  # reported below, but not left mounted
            shutil.rmtree(tmp, ignore_errors=True)
            if left:
                raise Failure(f'left behind: {left}')


def run_backend(backend, args, names, report):
    steps = [('install', lambda n: step_install(n, args.rootfs)), ('traffic', step_traffic), ('edit', step_edit),
             ('flush', step_flush)]
    if backend == 'nftables':
        steps.append(('liveness', step_liveness))
    steps += [('uninstall', step_uninstall), ('reinstall', lambda n: step_reinstall(n, args.rootfs))]
    t0 = time.monotonic()
    try:
        node = ImageNode(backend, args.image, args.bb, names, args.digest)
    except Exception as e:  # noqa: BLE001
        report(f'{backend}: node setup', False, time.monotonic() - t0, str(e))
        traceback.print_exc()
        return
    try:
        for name, fn in steps:
            t = time.monotonic()
            try:
                note = fn(node)
                report(f'{backend}: {name}', True, time.monotonic() - t, note)
            except Exception as e:  # noqa: BLE001
                report(f'{backend}: {name}', False, time.monotonic() - t, str(e))
                if not isinstance(e, Failure):
                    traceback.print_exc()
                if node.ds:
                    print('      agent log tail: ' + ' | '.join(node.ds.log('agent.log')[-5:]), flush=True)
                report_skipped = [s for s, _ in steps[steps.index((name, fn)) + 1:]]
                if report_skipped:
                    print(f'      not run after the failure: {", ".join(report_skipped)}', flush=True)
                break
    finally:
        try:
            node.close()
        except Exception as e:  # noqa: BLE001
            report(f'{backend}: cleanup', False, 0, str(e))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--image', default=os.path.join(REPO, '.build/image/ip-masq.tar'))
    ap.add_argument('--rootfs', default=os.path.join(REPO, '.build/image/rootfs'))
    ap.add_argument('--only', action='append', default=[])
    args = ap.parse_args()
    backends = [b for b in ('nftables', 'iptables', 'iptables-legacy') if not args.only or any(o in b for o in args.only)]
    if os.getuid() != 0:
        print('WARNING: image tier NOT RUN: it needs root (network namespaces, containerd)', file=sys.stderr)
        if os.environ.get('CI'):
            print('image: 0 passed, 1 failed')
            return 1
        print('image: 0 passed, 0 failed, all skipped')
        return 0
    with open(os.path.join(os.path.dirname(args.image), 'image.json')) as f:
        built = json.load(f)
    names, args.digest = built['names'], built['manifest']
    work = tempfile.mkdtemp(prefix='ipmimg-bb-')
    args.bb = os.path.join(work, 'bb.oci.tar')
    ociimage.write_oci_archive(args.bb, cn.IMAGE)
    results = []

    def report(name, ok, seconds, note):
        results.append(ok)
        print(f'{"ok  " if ok else "FAIL"}  {seconds:5.1f}s  {name}' + (f'\n      {note}' if note else ''), flush=True)

    started = time.monotonic()
    try:
        t = time.monotonic()
        try:
            note = check_archive(args, names, args.digest)
            report('archive', True, time.monotonic() - t, note)
        except Exception as e:  # noqa: BLE001
            report('archive', False, time.monotonic() - t, str(e))
        if not args.only or any(o in 'podman' for o in args.only):
            t = time.monotonic()
            try:
                note = check_podman(args, names)
                report('podman load', True, time.monotonic() - t, note)
            except Exception as e:  # noqa: BLE001
                report('podman load', False, time.monotonic() - t, str(e))
        for backend in backends:
            run_backend(backend, args, names, report)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f'image tier: {len(results)} checks in {time.monotonic() - started:.0f} s')
    print(f'image: {results.count(True)} passed, {results.count(False)} failed')
    return 0 if all(results) and results else 1


if __name__ == '__main__':
    sys.exit(main())
