"""The runtime tier: containerd's CRI plugin (the kubelet's path) and podman 4.3 (CNI backend) drive ip-masq.

    python3 Tests/Runtime/test_runtime.py --plugin .build/debug/ip-masq [--only SUBSTRING ...] [--list]

Root only (network namespaces, real daemons). Not root: every check is reported as not run, loudly, and in CI
(CI set) that is a failure. Each check builds its own throwaway node (network namespaces) and daemon with every dir
under a temporary directory, and removes them (and what libcni/containerd/podman wrote outside it for its pods)
even when it fails. The last line is `runtime: N passed, N failed`.
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import containerd_node as cn  # noqa: E402
import ociimage  # noqa: E402

PLUGIN = None
IMAGE_ARCHIVE = None
ROOTFS_TAR = None
CHECKS = []
NONMASQ = ['10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', 'fd00::/8']


KNOWN_FAILURES = {}


def check(name, known_failure=None):
    """Registers a check. `known_failure` names the pending fix it depends on: the check still runs, and its
    failure is printed loudly as KNOWN-FAIL (counted as skipped); once it passes, the marker must go."""
    def register(fn):
        CHECKS.append((name, fn))
        if known_failure:
            KNOWN_FAILURES[name] = known_failure
        return fn
    return register


class Failure(AssertionError):
    pass


def expect(cond, message):
    if not cond:
        raise Failure(message)


# --- a node with containerd ---------------------------------------------------------------------------------


def conflist(name, tmp, cni_version='1.0.0', ipv6=False, backend='nftables', plugin_extra=None, subnet=1,
             bridge='cni0'):
    ranges = [[{'subnet': f'10.244.{subnet}.0/24'}]]
    routes = [{'dst': '0.0.0.0/0'}]
    if ipv6:
        ranges.append([{'subnet': f'fd00:10:244:{subnet}::/64'}])
        routes.append({'dst': '::/0'})
    masq = {'type': 'ip-masq', 'nonMasqueradeCIDRs': NONMASQ, 'backend': backend,
            'lockFile': f'{tmp}/ip-masq.lock', 'stateDir': f'{tmp}/ip-masq-state'}
    masq.update(plugin_extra or {})
    return json.dumps({
        'cniVersion': cni_version, 'name': name,
        'plugins': [
            {'type': 'bridge', 'bridge': bridge, 'isGateway': True, 'ipMasq': False,
             'ipam': {'type': 'host-local', 'ranges': ranges, 'routes': routes, 'dataDir': f'{tmp}/ipam'}},
            masq,
        ]}, indent=1)


class Node:
    """One check's world: namespaces, containerd, conflist, image imported, servers answering."""

    def __init__(self, label, backend='nftables', ipv6=False, cni_version='1.0.0', plugin_extra=None):
        self.tmp = tempfile.mkdtemp(prefix='ipmrt-')
        self.backend, self.ipv6 = backend, ipv6
        self.net = f'rt{label}{os.getpid() % 10000}'
        self.world = cn.World(label[:6], ipv6=ipv6)
        self.cd = cn.Containerd(self.world.node, self.tmp)
        try:
            self.cd.link_cni_plugins(plugin=PLUGIN, record=True)
            self.write(cni_version=cni_version, plugin_extra=plugin_extra)
            self.cd.start()
            self.cd.import_image(IMAGE_ARCHIVE)
            self.world.serve()
        except BaseException:
            self.close()
            raise

    def write(self, cni_version='1.0.0', plugin_extra=None, text=None):
        self.cd.write_conflist(text or conflist(self.net, self.tmp, cni_version, self.ipv6, self.backend,
                                                plugin_extra))

    @property
    def client(self):
        return self.cd.client

    def close(self):
        try:
            self.cd.close()
        finally:
            self.world.close()
            left = cn.leftovers(self.tmp, self.cd.networks)
            shutil.rmtree(self.tmp, ignore_errors=True)
            if left:
                raise Failure(f'left behind: {left}')

    # -- observations --------------------------------------------------------------------------------------
    def registered(self):
        """Pods ip-masq has registered for our network (its own records, through `ip-masq list --json`)."""
        out = cn.sh(PLUGIN, 'list', '--json', '--state-dir', f'{self.tmp}/ip-masq-state', '--lock-file',
                    f'{self.tmp}/ip-masq.lock').stdout
        for net in json.loads(out).get('networks', []):
            if net['name'] == self.net:
                return net['pods']
        return []

    def netfilter_pod_entries(self):
        """Pod addresses present in the node's netfilter (nft set elements, or ipset entries)."""
        if self.backend == 'nftables':
            r = self.world.node.run('nft', 'list', 'table', 'inet', 'ip_masq', check=False)
            text = r.stdout if r.returncode == 0 else ''
        else:
            text = self.world.node.run('ipset', 'list', check=False).stdout
        return sorted({tok.strip(',{}') for tok in text.split()
                       if tok.startswith('10.244.') or tok.startswith('fd00:10:244:')})

    def ipam_addresses(self):
        d = os.path.join(self.tmp, 'ipam', self.net)
        if not os.path.isdir(d):
            return []
        return sorted(f for f in os.listdir(d) if not f.startswith('last_reserved_ip') and f != 'lock')

    def veths(self):
        out = self.world.node.run('ip', '-o', 'link', 'show', 'type', 'veth').stdout
        return sorted(line.split(':')[1].strip().split('@')[0] for line in out.splitlines()
                      if 'to-inet' not in line and 'to-priv' not in line)

    def assert_clean(self):
        expect(self.client.list_pod_sandbox() == [], f'sandboxes left: {self.client.list_pod_sandbox()}')
        expect(self.registered() == [], f'ip-masq records left: {self.registered()}')
        expect(self.netfilter_pod_entries() == [], f'netfilter pod entries left: {self.netfilter_pod_entries()}')
        expect(self.ipam_addresses() == [], f'ipam addresses left: {self.ipam_addresses()}')
        expect(self.veths() == [], f'veths left: {self.veths()}')
        results = [f for f in os.listdir('/var/lib/cni/results') if f.startswith(self.net + '-')] \
            if os.path.isdir('/var/lib/cni/results') else []
        expect(results == [], f'libcni results left: {results}')

    def assert_traffic(self, pod, ctr):
        """From inside the pod: the internet host sees the node's address, the private host the pod's."""
        ips = self.cd.pod_ips(pod)
        v4 = [ip for ip in ips if ':' not in ip]
        v6 = [ip for ip in ips if ':' in ip]
        expect(len(v4) == 1 and (len(v6) == 1) == self.ipv6, f'pod addresses {ips}')
        w = self.world
        got = cn.seen_from(self.cd, ctr, w.INTERNET4)
        expect(got == w.NODE_INTERNET4, f'internet saw {got}, wanted the node address {w.NODE_INTERNET4}')
        got = cn.seen_from(self.cd, ctr, w.PRIVATE4)
        expect(got == v4[0], f'private host saw {got}, wanted the pod address {v4[0]}')
        if self.ipv6:
            got = cn.seen_from(self.cd, ctr, w.INTERNET6)
            expect(got == w.NODE_INTERNET6, f'internet (v6) saw {got}, wanted {w.NODE_INTERNET6}')
            got = cn.seen_from(self.cd, ctr, w.PRIVATE6)
            expect(got == v6[0], f'private host (v6) saw {got}, wanted the pod address {v6[0]}')
        return ips


def with_node(label, **kw):
    def decorate(fn):
        def run():
            node = Node(label, **kw)
            try:
                fn(node)
            finally:
                node.close()
        return run
    return decorate


# --- containerd checks ----------------------------------------------------------------------------------------


def basic_cycle(node):
    pod, ctr, _ = node.cd.run_pod('web')
    st = node.client.pod_sandbox_status(pod)
    expect(st['state'] == 'READY', f'sandbox state {st}')
    ips = node.assert_traffic(pod, ctr)
    expect(sorted(p['containerID'] for p in node.registered()) == [pod], f'records {node.registered()}')
    expect(len(node.netfilter_pod_entries()) >= len(ips), f'netfilter entries {node.netfilter_pod_entries()}')
    node.cd.remove_pod(pod)
    node.assert_clean()
    return pod


def assert_calls(node, pod, cni_version):
    """What containerd called, as the wrapper recorded: ADD at RunPodSandbox, DEL at StopPodSandbox (with the
    cached prevResult, 0.4.0+), DEL at RemovePodSandbox with an empty CNI_NETNS and no prevResult."""
    calls = [c for c in node.cd.calls() if c['id'] == pod]
    verbs = [c['verb'] for c in calls]
    expect(verbs == ['ADD', 'DEL', 'DEL'], f'calls {verbs}')
    expect(all(c['status'] == 0 for c in calls), f'statuses {[c["status"] for c in calls]}')
    for c in calls:
        args = dict(kv.split('=', 1) for kv in c['args'].split(';'))
        expect({'K8S_POD_NAMESPACE', 'K8S_POD_NAME', 'K8S_POD_INFRA_CONTAINER_ID', 'K8S_POD_UID',
                'IgnoreUnknown'} <= set(args), f'CNI_ARGS {c["args"]}')
        expect(args['K8S_POD_INFRA_CONTAINER_ID'] == pod, 'K8S_POD_INFRA_CONTAINER_ID')
        expect(json.loads(c['stdin'])['cniVersion'] == cni_version, f'cniVersion of {c["verb"]}')
    add, stop, remove = calls
    expect('prevResult' in json.loads(add['stdin']) and add['netns'], 'ADD has prevResult and netns')
    expect(stop['netns'] != '', 'DEL at StopPodSandbox has the netns')
    # libcni caches the result for DEL from 0.4.0 on; with 0.3.x the first DEL has no prevResult either.
    expect(('prevResult' in json.loads(stop['stdin'])) == (cni_version != '0.3.1'),
           f'DEL at StopPodSandbox: prevResult present {"prevResult" in json.loads(stop["stdin"])} with {cni_version}')
    expect(remove['netns'] == '' and 'prevResult' not in json.loads(remove['stdin']),
           'DEL at RemovePodSandbox: empty CNI_NETNS, no prevResult')


def plugin_stderr_lines(node):
    """Lines containerd logged from the plugin's stderr (it copies them verbatim into its log)."""
    with open(node.cd.log_path, errors='replace') as f:
        return [line for line in f if 'ip-masq ' in line and (' error ' in line or ' warning ' in line
                                                               or ' info ' in line or ' debug ' in line)]


for _backend in ('nftables', 'iptables'):
    for _ipv6 in (False, True):
        def _basic(node, _v=_backend):
            pod = basic_cycle(node)
            assert_calls(node, pod, '1.0.0')
            noisy = plugin_stderr_lines(node)
            expect(noisy == [], f'a healthy ADD/DEL wrote to stderr (containerd log): {noisy[:3]}')
        check(f'containerd {_backend} {"dual-stack" if _ipv6 else "IPv4"}: pod starts, traffic masqueraded/kept, '
              f'ADD+DEL+DEL, stop+remove leave nothing')(
            with_node('basic', backend=_backend, ipv6=_ipv6)(_basic))

def info_level(node):
    pod = basic_cycle(node)
    lines = plugin_stderr_lines(node)
    adds = [line for line in lines if ' ip-masq info ADD ' in line and pod in line and 'registered 10.244.' in line]
    expect(len(adds) == 1, f'logLevel info: wanted one registration line in containerd\'s log, got {lines}')
    expect(all(line.count('ip-masq ') == 1 for line in lines), f'one message per line: {lines}')


check('containerd nftables logLevel info: each registration is one line in containerd\'s log')(
    with_node('info', plugin_extra={'logLevel': 'info'})(info_level))

for _version in ('0.3.1', '0.4.0', '1.0.0'):
    def _versions(node, _v=_version):
        pod = basic_cycle(node)
        assert_calls(node, pod, _v)
    check(f'containerd nftables cniVersion {_version}: basic cycle and the calls made')(
        with_node('v' + _version.replace('.', ''), cni_version=_version)(_versions))


def concurrent(node, count=10):
    pods, errors = [], []
    lock = threading.Lock()

    def start(i):
        try:
            pod, ctr, _ = node.cd.run_pod(f'c{i}')
            with lock:
                pods.append((pod, ctr))
        except Exception as e:  # noqa: BLE001
            with lock:
                errors.append(e)
    threads = [threading.Thread(target=start, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    expect(not errors, f'RunPodSandbox failed: {errors[:2]}')
    expect(len(pods) == count, f'{len(pods)} pods started')
    expect(len(node.registered()) == count, f'{len(node.registered())} registered')
    addrs = {a for p in node.registered() for a in [ip['address'] for ip in p['ips']]}
    expect(len(addrs) == count * (2 if node.ipv6 else 1), f'addresses {addrs}')
    node.assert_traffic(*pods[0])
    node.assert_traffic(*pods[-1])

    def remove(pod):
        try:
            node.cd.remove_pod(pod)
        except Exception as e:  # noqa: BLE001
            with lock:
                errors.append(e)
    threads = [threading.Thread(target=remove, args=(p,)) for p, _ in pods]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    expect(not errors, f'Stop/RemovePodSandbox failed: {errors[:2]}')
    node.assert_clean()
    for pod, _ in pods:
        verbs = [(c['verb'], c['status']) for c in node.cd.calls() if c['id'] == pod]
        expect(verbs == [('ADD', 0), ('DEL', 0), ('DEL', 0)], f'{pod[:12]}: calls {verbs}')


check('containerd nftables dual-stack: 10 pods created and removed concurrently')(
    with_node('conc', ipv6=True)(concurrent))
check('containerd iptables IPv4: 10 pods created and removed concurrently')(
    with_node('conci', backend='iptables')(concurrent))


def restart(node):
    a = node.cd.run_pod('a')
    b = node.cd.run_pod('b')
    before = len(node.cd.calls())
    node.cd.restart()
    expect(len(node.cd.calls()) == before, f'containerd called the plugin at restart: {node.cd.calls()[before:]}')
    ready = {s['id'] for s in node.client.list_pod_sandbox(state='READY')}
    expect({a[0], b[0]} <= ready, f'pods after restart: {node.client.list_pod_sandbox()}')
    node.assert_traffic(a[0], a[1])
    c = node.cd.run_pod('c')
    node.assert_traffic(c[0], c[1])
    for pod in (a[0], b[0], c[0]):
        node.cd.remove_pod(pod)
    node.assert_clean()


check('containerd nftables dual-stack: restarted with live pods, then the pods stop without leaks')(
    with_node('restart', ipv6=True)(restart))
check('containerd iptables IPv4: restarted with live pods, then the pods stop without leaks')(
    with_node('restarti', backend='iptables')(restart))


def wait_reloaded(node, marker_pod_name, want_masq_private):
    """containerd reloads the conf dir asynchronously (inotify): poll with fresh pods until the new policy holds."""
    deadline = time.monotonic() + 20
    while True:
        pod, ctr, _ = node.cd.run_pod(marker_pod_name)
        got = cn.seen_from(node.cd, ctr, node.world.PRIVATE4)
        masqueraded = got == '192.168.77.1'
        if masqueraded == want_masq_private or time.monotonic() > deadline:
            return pod, ctr, got
        node.cd.remove_pod(pod)
        time.sleep(0.2)


def rewrite(node):
    old, old_ctr, _ = node.cd.run_pod('old')
    node.assert_traffic(old, old_ctr)
    # The private range leaves nonMasqueradeCIDRs: new pods' traffic to it is masqueraded from now on.
    node.write(plugin_extra={'nonMasqueradeCIDRs': ['10.0.0.0/8']})
    new, new_ctr, got = wait_reloaded(node, 'new', True)
    expect(got == '192.168.77.1', f'after the rewrite the private host saw {got}, wanted the node address')
    got = cn.seen_from(node.cd, old_ctr, node.world.PRIVATE4)
    expect(got == '192.168.77.1', f'the old pod follows the network\'s new rules too: saw {got}')
    node.cd.remove_pod(old)
    node.cd.remove_pod(new)
    node.assert_clean()


check('containerd nftables: conflist rewritten atomically between pods (new pods follow it, old pods stop)')(
    with_node('rewrite')(rewrite))
check('containerd iptables: conflist rewritten atomically between pods (new pods follow it, old pods stop)')(
    with_node('rewritei', backend='iptables')(rewrite))


def invalid(node):
    pods = [node.cd.run_pod(f'p{i}') for i in range(3)]
    node.assert_traffic(pods[0][0], pods[0][1])
    # A policy value the plugin refuses (host bits set): DEL must still remove what the pods registered.
    node.write(plugin_extra={'nonMasqueradeCIDRs': ['10.0.0.1/8']})
    time.sleep(1)  # containerd's inotify reload
    failures = []
    for pod, _, _ in pods:
        try:
            node.cd.remove_pod(pod)
        except Exception as e:  # noqa: BLE001
            failures.append(e.details()[:400] if hasattr(e, 'details') else str(e)[:400])
    expect(not failures, f'Stop/RemovePodSandbox failed with the invalid conflist: {failures[:1]}')
    node.assert_clean()
    # The problem is still said, once per line, in containerd's log.
    said = [line for line in plugin_stderr_lines(node) if '10.0.0.1/8' in line]
    expect(said and all(line.count(' ip-masq ') == 1 for line in said), f'the invalid value in containerd\'s log: {said}')


check('containerd nftables: conflist made invalid while pods run; they still stop without leaks')(
    with_node('invalid')(invalid))
check('containerd iptables: conflist made invalid while pods run; they still stop without leaks')(
    with_node('invalidi', backend='iptables')(invalid))


def broken_then_repaired(node):
    pods = [node.cd.run_pod(f'p{i}') for i in range(2)]
    # Not JSON any more: containerd itself cannot load the network, so it cannot DEL (the plugin is never run).
    node.write(text='{ "cniVersion": "1.0.0", "name": ')
    time.sleep(1)  # containerd's inotify reload
    try:
        node.client.stop_pod_sandbox(pods[0][0])
        refused = None
    except Exception as e:  # noqa: BLE001
        refused = e.details() if hasattr(e, 'details') else str(e)
    expect(refused and 'cni plugin not initialized' in refused, f'StopPodSandbox with a broken conflist: {refused}')
    expect(len(node.registered()) >= 1, 'the pods stay registered while containerd cannot DEL')
    # Repaired (as an operator or `ip-masq install` would): the kubelet's retries now remove everything.
    node.write()
    deadline = time.monotonic() + 10
    for pod, _, _ in pods:
        while True:
            try:
                node.cd.remove_pod(pod)
                break
            except Exception:  # noqa: BLE001
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    node.assert_clean()


check('containerd nftables: conflist broken (not JSON) under running pods: no DEL until repaired, then no leaks')(
    with_node('broken')(broken_then_repaired))


# --- podman -----------------------------------------------------------------------------------------------------

import podman_node as pn  # noqa: E402


def podman_cycle(backend, ipv6=False):
    def run():
        tmp = tempfile.mkdtemp(prefix='ipmrt-pm-')
        world = cn.World('pm', ipv6=ipv6)
        pm = pn.Podman(world.node, tmp)
        nets = [f'pm{backend[:2]}a{os.getpid() % 10000}', f'pm{backend[:2]}b{os.getpid() % 10000}']
        try:
            pm.link_cni_plugins(PLUGIN)
            for i, net in enumerate(nets):
                text = conflist(net, tmp, '1.0.0', ipv6, backend, subnet=10 + i, bridge=f'cni{i}')
                pm.write_conflist(text, f'{10 + i}-{net}.conflist')
            pm.import_rootfs(ROOTFS_TAR)
            world.serve()

            def traffic(name, *want_pod_ips):
                got = pm.seen_from(name, world.INTERNET4)
                expect(got == world.NODE_INTERNET4, f'{name}: internet saw {got}')
                got = pm.seen_from(name, world.PRIVATE4)
                expect(got in want_pod_ips, f'{name}: private host saw {got}, wanted one of {want_pod_ips}')
                if ipv6:
                    got = pm.seen_from(name, world.INTERNET6)
                    expect(got == world.NODE_INTERNET6, f'{name}: internet (v6) saw {got}')
                    got = pm.seen_from(name, world.PRIVATE6)
                    want6 = [pm.ip(name, n, 6) for n in nets if n in pm.networks(name)]
                    expect(got in want6, f'{name}: private host (v6) saw {got}, wanted one of {want6}')

            def registered(net):
                out = cn.sh(PLUGIN, 'list', '--json', '--state-dir', f'{tmp}/ip-masq-state', '--lock-file',
                            f'{tmp}/ip-masq.lock').stdout
                return [p for n in json.loads(out)['networks'] if n['name'] == net for p in n['pods']]

            def verbs_since(mark):
                return [c['verb'] for c in pm.calls()[mark:]]

            def expect_calls(mark, want, what):
                got = verbs_since(mark)
                # podman asks VERSION (CNI_NETNS=dummy) in each process that loads the networks, before any use.
                expect([v for v in got if v != 'VERSION'] == want and got and got[0] == 'VERSION',
                       f'{what}: podman called {got}, wanted VERSION first, then {want}')

            mark = len(pm.calls())
            pm.run('c1', nets[0])
            expect_calls(mark, ['ADD'], 'run')
            ip1 = pm.ip('c1', nets[0])
            traffic('c1', ip1)
            expect(len(registered(nets[0])) == 1, f'records {registered(nets[0])}')
            mark = len(pm.calls())
            pm.podman('restart', '-t', '0', 'c1')
            expect_calls(mark, ['DEL', 'ADD'], 'restart')
            ip1 = pm.ip('c1', nets[0])
            traffic('c1', ip1)
            expect(len(registered(nets[0])) == 1, f'after restart: records {registered(nets[0])}')
            mark = len(pm.calls())
            pm.podman('network', 'reload', 'c1')
            expect_calls(mark, ['DEL', 'ADD'], 'network reload')
            traffic('c1', pm.ip('c1', nets[0]))
            expect(len(registered(nets[0])) == 1, f'after network reload: records {registered(nets[0])}')
            # Two networks on one container: one registration in each.
            pm.run('c2', ','.join(nets))
            expect(len(registered(nets[0])) == 2 and len(registered(nets[1])) == 1,
                   f'two networks: {registered(nets[0])} / {registered(nets[1])}')
            traffic('c2', pm.ip('c2', nets[0]), pm.ip('c2', nets[1]))
            mark = len(pm.calls())
            for name in ('c1', 'c2'):
                pm.podman('stop', '-t', '0', name)
            expect(sorted(v for v in verbs_since(mark) if v != 'VERSION') == ['DEL', 'DEL', 'DEL'],
                   f'stop: podman called {verbs_since(mark)} (one DEL per network attachment)')
            expect(registered(nets[0]) == [] and registered(nets[1]) == [], 'records after stop')
            for name in ('c1', 'c2'):
                pm.podman('rm', name)
            text = world.node.run('nft', 'list', 'table', 'inet', 'ip_masq', check=False).stdout \
                if backend == 'nftables' else world.node.run('ipset', 'list').stdout
            expect('10.244.1' not in text and 'fd00:10:244:' not in text, f'netfilter entries left: {text}')
            for net in nets:
                d = os.path.join(tmp, 'ipam', net)
                held = [f for f in os.listdir(d) if not f.startswith('last_reserved_ip') and f != 'lock'] \
                    if os.path.isdir(d) else []
                expect(held == [], f'ipam addresses left in {net}: {held}')
            veths = world.node.run('ip', '-o', 'link', 'show', 'type', 'veth').stdout
            expect(veths.count('\n') == 2, f'veths left: {veths}')
            calls = pm.calls()
            expect(all(c['status'] == 0 for c in calls), f'failed calls: {[c for c in calls if c["status"]]}')
        finally:
            pm.close()
            world.close()
            left = pn.leftovers(tmp)
            shutil.rmtree(tmp, ignore_errors=True)
            if left:
                raise Failure(f'left behind: {left}')
    return run


for _backend, _ipv6 in (('nftables', True), ('iptables', False)):
    check(f'podman {_backend} {"dual-stack" if _ipv6 else "IPv4"}: run, traffic, restart, network reload, '
          f'two networks, stop, rm')(podman_cycle(_backend, _ipv6))


# --- the runner -------------------------------------------------------------------------------------------------


def main():
    global PLUGIN, IMAGE_ARCHIVE, ROOTFS_TAR
    ap = argparse.ArgumentParser()
    ap.add_argument('--plugin', required=False)
    ap.add_argument('--only', action='append', default=[])
    ap.add_argument('--list', action='store_true')
    args = ap.parse_args()
    selected = [(n, f) for n, f in CHECKS if not args.only or any(o in n for o in args.only)]
    if args.list:
        for n, _ in selected:
            print(n)
        return 0
    if os.getuid() != 0:
        print(f'WARNING: runtime tier NOT RUN: {len(selected)} checks need root (network namespaces, containerd,'
              ' podman)', file=sys.stderr)
        if os.environ.get('CI'):
            print(f'runtime: 0 passed, {len(selected)} failed')
            return 1
        print(f'runtime: 0 passed, 0 failed, {len(selected)} skipped')
        return 0
    PLUGIN = os.path.abspath(args.plugin)
    # A SIGTERM (a CI timeout) unwinds like an exception, so every check's cleanup still runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit('runtime tier: terminated'))
    work = tempfile.mkdtemp(prefix='ipmrt-img-')
    IMAGE_ARCHIVE = os.path.join(work, 'bb.oci.tar')
    ROOTFS_TAR = os.path.join(work, 'rootfs.tar')
    ociimage.write_oci_archive(IMAGE_ARCHIVE, cn.IMAGE)
    ociimage.write_rootfs_tar(ROOTFS_TAR)
    passed = failed = known = 0
    started = time.monotonic()
    try:
        for name, fn in selected:
            t = time.monotonic()
            try:
                fn()
                passed += 1
                print(f'ok    {time.monotonic() - t:5.1f}s  {name}', flush=True)
                if name in KNOWN_FAILURES:
                    print(f'      NOTE: marked as depending on {KNOWN_FAILURES[name]}, and now passes: remove the '
                          'marker', flush=True)
            except Exception as e:  # noqa: BLE001
                if name in KNOWN_FAILURES:
                    known += 1
                    print(f'KNOWN-FAIL {time.monotonic() - t:5.1f}s  {name}\n      waits for '
                          f'{KNOWN_FAILURES[name]}: {e}', flush=True)
                    continue
                failed += 1
                print(f'FAIL  {time.monotonic() - t:5.1f}s  {name}\n      {e}', flush=True)
                if not isinstance(e, Failure):
                    traceback.print_exc()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f'runtime tier: {len(selected)} checks in {time.monotonic() - started:.0f} s')
    if known:
        print(f'WARNING: {known} check(s) fail until a pending fix lands (KNOWN-FAIL above)', flush=True)
    print(f'runtime: {passed} passed, {failed} failed' + (f', {known} skipped' if known else ''))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
