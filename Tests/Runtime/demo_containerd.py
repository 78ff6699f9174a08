"""`bash .ci/demo --runtime containerd`: the demo's two-pod story driven through containerd's CRI, as a kubelet
would, with ip-masq put into containerd's CNI dirs by `ip-masq install`.

    python3 Tests/Runtime/demo_containerd.py --plugin .build/release/ip-masq      (root; PYTHONPATH with grpcio)
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import containerd_node as cn  # noqa: E402
import ociimage  # noqa: E402


def say(text=''):
    print(text, flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--plugin', required=True)
    args = ap.parse_args()
    plugin = os.path.abspath(args.plugin)
    tmp = tempfile.mkdtemp(prefix='ipmasq-demo-cri-')
    world = cn.World('demo')
    cd = cn.Containerd(world.node, tmp)
    unexpected = 0
    try:
        say('== node namespace: containerd (CRI) with the reference bridge + host-local in its conf dir')
        cd.link_cni_plugins()  # loopback, bridge, host-local, ...: no ip-masq yet
        cd.write_conflist(json.dumps({
            'cniVersion': '1.0.0', 'name': 'demo',
            'plugins': [{'type': 'bridge', 'bridge': 'cni0', 'isGateway': True, 'ipMasq': False,
                         'ipam': {'type': 'host-local', 'ranges': [[{'subnet': '10.244.0.0/24'}]],
                                  'routes': [{'dst': '0.0.0.0/0'}], 'dataDir': f'{tmp}/host-local'}}]},
            indent=2), name='10-demo.conflist')
        # ip-masq-agent's ConfigMap format, as the DaemonSet would copy it to the node.
        agent_config = os.path.join(tmp, 'configmap-config')
        with open(agent_config, 'w') as f:
            f.write('nonMasqueradeCIDRs:\n  - 10.0.0.0/8\n  - 172.16.0.0/12\n  - 192.168.0.0/16\n'
                    'masqLinkLocal: false\nresyncInterval: 60s\n')
        say()
        say(f'== ip-masq install --cni-bin-dir {cd.bin_dir} --cni-conf-dir {cd.conf_dir} --config-file ...')
        r = subprocess.run([plugin, 'install', '--cni-bin-dir', cd.bin_dir, '--cni-conf-dir', cd.conf_dir,
                            '--config-file', agent_config, '--host-config-file', f'{tmp}/etc-cni-ip-masq/config'],
                           capture_output=True, text=True)
        sys.stdout.write(r.stdout)
        sys.stderr.write(r.stderr)
        if r.returncode != 0:
            raise SystemExit('demo: ip-masq install failed')
        # Demo only: the plugin's lock and records under the demo's directory instead of /run/cni.
        path = os.path.join(cd.conf_dir, '10-demo.conflist')
        with open(path) as f:
            netconf = json.load(f)
        for entry in netconf['plugins']:
            if entry['type'] == 'ip-masq':
                entry.update({'lockFile': f'{tmp}/ip-masq.lock', 'stateDir': f'{tmp}/ip-masq-state'})
        cd.write_conflist(json.dumps(netconf, indent=2), name='10-demo.conflist')
        say('the conflist containerd loads now:')
        with open(path) as f:
            say(f.read().rstrip())

        archive = os.path.join(tmp, 'busybox.oci.tar')
        ociimage.write_oci_archive(archive, cn.IMAGE)
        cd.start()
        cd.import_image(archive)
        world.serve()
        say()
        say('== two pods through CRI: RunPodSandbox + CreateContainer + StartContainer (busybox, offline image)')
        pods = []
        for name in ('pod1', 'pod2'):
            pod, ctr, _ = cd.run_pod(name)
            ip = cd.pod_ips(pod)[0]
            pods.append((name, pod, ctr, ip))
            say(f'{name}  sandbox {pod[:12]}  {ip}')

        say()
        say('== what each destination saw (ExecSync: busybox nc from inside the pod)')
        for name, pod, ctr, ip in pods:
            for dest, addr, want, verdict in (
                    ('internet', world.INTERNET4, world.NODE_INTERNET4, "masqueraded to the node's address"),
                    ('private', world.PRIVATE4, ip, "kept the pod's address (192.168.0.0/16 is non-masquerade)")):
                got = cn.seen_from(cd, ctr, addr)
                if got != want:
                    verdict = f'UNEXPECTED: wanted {want}'
                    unexpected += 1
                say(f'{name:5} {ip:11} -> {dest + " " + addr:22} saw {got:12} {verdict}')

        say()
        say('== the rules that did it: nft list table inet ip_masq, in the node namespace (empty sets left out)')
        table = world.node.run('nft', 'list', 'table', 'inet', 'ip_masq').stdout
        say(drop_empty_sets(table).rstrip())

        say()
        say('== cleaning up: StopPodSandbox + RemovePodSandbox (as a kubelet deleting the pods), then the node')
        for name, pod, _, _ in pods:
            cd.remove_pod(pod)
        table = world.node.run('nft', 'list', 'table', 'inet', 'ip_masq').stdout
        left = sum(1 for line in table.splitlines() if 'comment' in line and '10.244.0.' in line)
        say(f'pod entries left after the pods were removed: {left}')
        if left:
            unexpected += 1
    finally:
        cd.close()
        world.close()
        shutil.rmtree(tmp, ignore_errors=True)
    if unexpected:
        raise SystemExit(f'demo: {unexpected} unexpected outcome(s)')


def drop_empty_sets(table):
    out, block, in_set, keep = [], [], False, False
    for line in table.splitlines():
        if line.startswith('\tset '):
            block, in_set, keep = [line], True, False
            continue
        if in_set:
            block.append(line)
            keep = keep or 'elements =' in line
            if line.startswith('\t}'):
                in_set = False
                if keep:
                    out += block
                elif out and out[-1] == '':
                    out.pop()
            continue
        out.append(line)
    return '\n'.join(out)


if __name__ == '__main__':
    main()
