"""Benchmark rows through containerd's CRI (called by Tests/Bench/bench.py, `bash .ci/bench --runtime`).

Per N (other pods' worth of masquerade state on the node) and variant:
  reference: bridge ipMasq true (+ host-local): the reference plugins' own per-pod iptables chain (iptables-nft);
  ours:      bridge ipMasq false + host-local + ip-masq (nftables backend);
times RunPodSandbox, and StopPodSandbox + RemovePodSandbox, as a kubelet calls them (client-side wall time of the
gRPC calls), the variants taking turns one pod each. Then a pass with ip-masq behind a recording wrapper gives the
plugin's own share of a pod start and stop (the wrapper's clock around the plugin process).
"""
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import containerd_node as cn  # noqa: E402
import ociimage  # noqa: E402

NETWORK = 'benchcri'


class Scenario:
    def __init__(self, b, plugin, variant, n, archive):
        self.b, self.variant, self.n = b, variant, n
        self.tmp = tempfile.mkdtemp(prefix='ipmasq-bench-cri-')
        self.shm = tempfile.mkdtemp(prefix='ipmasq-bench-cri-', dir=b.SHM)
        self.node = cn.Netns(f'bench{variant[:3]}{n}')
        self.cd = cn.Containerd(self.node, self.tmp)
        self.plugin = plugin
        self.cd.link_cni_plugins(plugin=plugin)
        self.cd.write_conflist(json.dumps(self.conflist()))
        self.cd.start()
        self.cd.import_image(archive)
        with b.inside(self.node.name):
            b.run(['sysctl', '-q', '-w', 'net.ipv4.ip_forward=1'])

    def conflist(self):
        bridge = {'type': 'bridge', 'bridge': 'cni0', 'isGateway': True, 'ipMasq': self.variant == 'reference',
                  'ipam': {'type': 'host-local', 'dataDir': self.shm + '/host-local',
                           'ranges': [[{'subnet': '10.88.0.0/16', 'rangeStart': '10.88.100.1',
                                        'rangeEnd': '10.88.250.254'}]],
                           'routes': [{'dst': '0.0.0.0/0'}]}}
        plugins = [bridge]
        if self.variant == 'ours':
            plugins.append({'type': 'ip-masq', 'backend': 'nftables', 'lockFile': self.shm + '/ip-masq.lock',
                            'stateDir': self.shm + '/state'})
        return {'cniVersion': '1.0.0', 'name': NETWORK, 'plugins': plugins}

    def prepare(self):
        """N pods' worth of state, copied from a real template pod's (then the template pod is removed)."""
        b = self.b
        pod, _ = self.cd.run_sandbox('template')
        ip = self.cd.pod_ips(pod)[0]
        if self.n:
            pods = [('bench-pod-%05d' % i, '10.88.%d.%d' % (i // 250, i % 250 + 2)) for i in range(self.n)]
            with b.inside(self.node.name):
                if self.variant == 'reference':
                    b.bulk_reference_rules('iptables-nft', NETWORK, pod, ip, pods)
                else:
                    b.bulk_records(self.shm + '/state', pod, ip, pods)
                    b.bulk_nft_elements(pod, ip, pods)
        self.cd.remove_pod(pod)

    def cycle(self, index):
        """One pod: (RunPodSandbox ms, StopPodSandbox + RemovePodSandbox ms)."""
        start = time.perf_counter()
        pod, _ = self.cd.run_sandbox('p%d' % index)
        started = time.perf_counter()
        self.cd.client.stop_pod_sandbox(pod)
        self.cd.client.remove_pod_sandbox(pod)
        done = time.perf_counter()
        return (started - start) * 1e3, (done - started) * 1e3

    def state_left(self):
        b = self.b
        with b.inside(self.node.name):
            if self.variant == 'reference':
                return sum(1 for line in b.run(['iptables-nft-save', '-t', 'nat']).splitlines()
                           if line.startswith('-A POSTROUTING') and '-j CNI-' in line)
            return b.count_nft_elements('10.88.')

    def record(self):
        """ip-masq behind the recording wrapper from now on."""
        self.cd.link_cni_plugins(plugin=self.plugin, record=True)

    def close(self):
        try:
            self.cd.close()
        finally:
            self.node.close()
            shutil.rmtree(self.tmp, ignore_errors=True)
            shutil.rmtree(self.shm, ignore_errors=True)


def measure(b, plugin, runs, counts, log):
    """Returns {variant: {n: {'RunPodSandbox': summary, 'StopPodSandbox+RemovePodSandbox': summary}}, and for
    'ours' also 'plugin ADD', 'plugin DEL x2', 'RunPodSandbox (wrapped)', 'Stop+Remove (wrapped)'}."""
    work = tempfile.mkdtemp(prefix='ipmasq-bench-cri-img-')
    archive = os.path.join(work, 'bb.oci.tar')
    ociimage.write_oci_archive(archive, cn.IMAGE)
    results = {}
    try:
        for n in counts:
            scenarios = []
            try:
                for variant in ('reference', 'ours'):
                    log('whole pod through containerd (CRI): %s, N=%d' % (variant, n))
                    sc = Scenario(b, plugin, variant, n, archive)
                    scenarios.append(sc)
                    started = time.time()
                    sc.prepare()
                    log("  %d pods' state in bulk in %.1f s" % (n, time.time() - started))
                samples = {sc.variant: (b.Samples(), b.Samples()) for sc in scenarios}
                for index in range(runs + 2):
                    for sc in scenarios:
                        run_ms, stop_ms = sc.cycle(index)
                        if index >= 2:  # the first two warm caches
                            samples[sc.variant][0].add(run_ms)
                            samples[sc.variant][1].add(stop_ms)
                for sc in scenarios:
                    left = sc.state_left()
                    if left != n:
                        raise RuntimeError('%s: %d pods\' state left after the runs, expected %d' % (sc.variant, left,
                                                                                                     n))
                    run_s, stop_s = samples[sc.variant]
                    results.setdefault(sc.variant, {})[n] = {'RunPodSandbox': run_s.summary(),
                                                             'StopPodSandbox+RemovePodSandbox': stop_s.summary()}
                # The plugin's share, wrapper-timed (the wrapper's own cost is in these pod figures, not above).
                ours = scenarios[-1]
                ours.record()
                wrapped_run, wrapped_stop = b.Samples(), b.Samples()
                for index in range(runs + 2):
                    run_ms, stop_ms = ours.cycle(1000 + index)
                    if index >= 2:
                        wrapped_run.add(run_ms)
                        wrapped_stop.add(stop_ms)
                adds, dels = b.Samples(), b.Samples()
                by_pod = {}
                for call in ours.cd.calls():
                    by_pod.setdefault(call['id'], []).append(call)
                for calls in list(by_pod.values())[2:]:
                    adds.add(sum(c['ns'] for c in calls if c['verb'] == 'ADD') / 1e6)
                    dels.add(sum(c['ns'] for c in calls if c['verb'] == 'DEL') / 1e6)
                results['ours'][n].update({'plugin ADD (wrapper-timed)': adds.summary(),
                                           'plugin DEL x2 (wrapper-timed)': dels.summary(),
                                           'RunPodSandbox (wrapped)': wrapped_run.summary(),
                                           'StopPodSandbox+RemovePodSandbox (wrapped)': wrapped_stop.summary()})
            finally:
                for sc in scenarios:
                    sc.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


def _by_n(by_n, n):
    return by_n.get(n) or by_n.get(str(n)) or {}


def section(runtime, runs):
    """The report's section (markdown lines) for the runtime rows."""
    med = lambda s: s['median'] if s else None  # noqa: E731
    fmt = lambda s: '%.1f (%.1f–%.1f)' % (s['median'], s['min'], s['max']) if s else '–'  # noqa: E731
    out = ['## Whole pod through containerd (CRI, as a kubelet calls it)', '',
           'containerd 1.6 (Debian) in a node namespace, driven by our CRI client (Tests/Runtime/cri.py); times are the '
           'client\'s wall time of the gRPC calls in milliseconds, median (min–max) over %d pods per figure, the '
           'variants taking turns one pod each. `reference`: bridge `ipMasq: true` + host-local (its per-pod iptables '
           'chain, iptables-nft); `ours`: bridge `ipMasq: false` + host-local + ip-masq (nftables). N other pods\' '
           'worth of masquerade state on the node (copied from a real pod\'s).' % runs, '',
           '| variant | call | N = 0 | N = 1,000 |', '|---|---|---:|---:|']
    for variant in ('reference', 'ours'):
        by_n = runtime.get(variant, {})
        for key in ('RunPodSandbox', 'StopPodSandbox+RemovePodSandbox'):
            out.append('| %s | %s | %s |' % (variant, key, ' | '.join(fmt(_by_n(by_n, n).get(key)) for n in (0, 1000))))
    ours = runtime.get('ours', {})
    for key in ('plugin ADD (wrapper-timed)', 'RunPodSandbox (wrapped)', 'plugin DEL x2 (wrapper-timed)',
                'StopPodSandbox+RemovePodSandbox (wrapped)'):
        out.append('| ours | %s | %s |' % (key, ' | '.join(fmt(_by_n(ours, n).get(key)) for n in (0, 1000))))
    out.append('')
    def verdict(ours_ms, ref_ms):
        if abs(ours_ms - ref_ms) < 0.05 * ref_ms:
            return 'within 5%: about equal'
        return 'ours %.2f× faster' % (ref_ms / ours_ms) if ours_ms < ref_ms else 'reference %.2f× faster' % (
            ours_ms / ref_ms)
    notes = []
    for n in (0, 1000):
        o, r = _by_n(ours, n), _by_n(runtime.get('reference', {}), n)
        if o and r:
            notes.append('N=%d: pod start %.1f vs %.1f ms (%s), stop+remove %.1f vs %.1f ms (%s)' % (
                n, med(o['RunPodSandbox']), med(r['RunPodSandbox']),
                verdict(med(o['RunPodSandbox']), med(r['RunPodSandbox'])),
                med(o['StopPodSandbox+RemovePodSandbox']), med(r['StopPodSandbox+RemovePodSandbox']),
                verdict(med(o['StopPodSandbox+RemovePodSandbox']), med(r['StopPodSandbox+RemovePodSandbox']))))
        if o.get('plugin ADD (wrapper-timed)') and o.get('RunPodSandbox (wrapped)'):
            notes.append('N=%d: ip-masq\'s share of a pod start %.0f%% (%.1f of %.1f ms), of a stop+remove %.0f%% '
                         '(two DELs, %.1f of %.1f ms)' % (
                             n, 100 * med(o['plugin ADD (wrapper-timed)']) / med(o['RunPodSandbox (wrapped)']),
                             med(o['plugin ADD (wrapper-timed)']), med(o['RunPodSandbox (wrapped)']),
                             100 * med(o['plugin DEL x2 (wrapper-timed)'])
                             / med(o['StopPodSandbox+RemovePodSandbox (wrapped)']),
                             med(o['plugin DEL x2 (wrapper-timed)']),
                             med(o['StopPodSandbox+RemovePodSandbox (wrapped)'])))
    if notes:
        out.append('Ours against the reference: ' + '; '.join(notes) + '. The share comes from a second pass with '
                   'ip-masq behind a bash wrapper that times the plugin process (so those pod figures include the '
                   'wrapper\'s own few milliseconds).')
        out.append('')
    return out
