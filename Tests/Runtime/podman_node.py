"""podman 4.3 with its CNI backend, run inside a node network namespace, every dir under a temporary directory.

    pm = Podman(node_netns, tmp)
    pm.link_cni_plugins('/path/ip-masq')      # wrapper that records every call (pm.calls())
    pm.write_conflist(text, '10-net.conflist')
    pm.import_rootfs(rootfs_tar)              # podman import ... localhost/bb:1
    pm.run('c1', 'net1')                      # podman run -d --network net1 (names the network explicitly:
                                              # podman's default_network is never set to our conflist's name)
    pm.seen_from('c1', '203.0.113.2')         # busybox nc from inside the container
    pm.podman('stop', '-t', '0', 'c1'); pm.podman('rm', 'c1')
    pm.close()                                # removes our containers, the netns podman made for them, our files
"""
import json
import os
import shutil
import subprocess
import time

import containerd_node as cn

IMAGE = 'localhost/bb:1'

CONTAINERS_CONF = '''[containers]
log_driver = "k8s-file"
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[network]
network_backend = "cni"
cni_plugin_dirs = ["{bin_dir}"]
network_config_dir = "{conf_dir}"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{tmp}/events.log"
runtime = "runc"
lock_type = "file"
volume_path = "{tmp}/volumes"
static_dir = "{tmp}/libpod"
tmp_dir = "{tmp}/tmp"
'''

STORAGE_CONF = '''[storage]
driver = "overlay"
runroot = "{tmp}/runroot"
graphroot = "{tmp}/root"
'''

BLOB_CACHE = '/var/lib/containers/cache/blob-info-cache-v1.boltdb'


class Podman:
    def __init__(self, node, tmp):
        self.node, self.tmp = node, tmp
        self.bin_dir = os.path.join(tmp, 'cni', 'bin')
        self.conf_dir = os.path.join(tmp, 'net.d')
        self.calls_log = os.path.join(tmp, 'cni-calls.log')
        self.names = []
        self.had_blob_cache = os.path.exists(BLOB_CACHE)
        self.had_var_lib_containers = os.path.exists('/var/lib/containers')
        for d in (self.bin_dir, self.conf_dir, os.path.join(tmp, 'tmp')):
            os.makedirs(d, exist_ok=True)
        with open(os.path.join(tmp, 'containers.conf'), 'w') as f:
            f.write(CONTAINERS_CONF.format(bin_dir=self.bin_dir, conf_dir=self.conf_dir, tmp=tmp))
        with open(os.path.join(tmp, 'storage.conf'), 'w') as f:
            f.write(STORAGE_CONF.format(tmp=tmp))
        self.env = dict(os.environ, CONTAINERS_CONF=os.path.join(tmp, 'containers.conf'),
                        CONTAINERS_STORAGE_CONF=os.path.join(tmp, 'storage.conf'))

    def link_cni_plugins(self, plugin):
        helper = cn.Containerd.__new__(cn.Containerd)
        helper.bin_dir, helper.calls_log = self.bin_dir, self.calls_log
        cn.Containerd.link_cni_plugins(helper, plugin=plugin, record=True)

    def calls(self):
        helper = cn.Containerd.__new__(cn.Containerd)
        helper.calls_log = self.calls_log
        return cn.Containerd.calls(helper)

    def write_conflist(self, text, name):
        tmp = os.path.join(self.conf_dir, '.' + name + '.tmp')
        with open(tmp, 'w') as f:
            f.write(text)
        os.rename(tmp, os.path.join(self.conf_dir, name))

    def podman(self, *args, check=True, timeout=120):
        argv = ['nsenter', '--net=' + self.node.path, 'podman', '--root', f'{self.tmp}/root', '--runroot',
                f'{self.tmp}/runroot', '--storage-driver', 'overlay', '--cgroup-manager', 'cgroupfs',
                '--events-backend', 'file', '--network-backend', 'cni', '--tmpdir', f'{self.tmp}/tmp',
                '--runtime', 'runc'] + [str(a) for a in args]
        r = subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        if check and r.returncode != 0:
            raise RuntimeError(f'podman {" ".join(map(str, args))} failed ({r.returncode}): {r.stderr}{r.stdout}')
        return r

    def import_rootfs(self, tar, ref=IMAGE):
        self.podman('import', tar, ref)

    def run(self, name, networks, command=('/bin/sleep', '100000')):
        self.names.append(name)
        self.podman('run', '-d', '--name', name, '--network', networks, IMAGE, *command)

    def ip(self, name, network, family=4):
        nets = json.loads(self.podman('inspect', name).stdout)[0]['NetworkSettings']['Networks']
        return nets[network]['IPAddress' if family == 4 else 'GlobalIPv6Address']

    def networks(self, name):
        return list(json.loads(self.podman('inspect', name).stdout)[0]['NetworkSettings']['Networks'])

    def seen_from(self, name, addr, port=8080, tries=3):
        last = None
        for _ in range(tries):
            r = self.podman('exec', name, 'sh', '-c', f'nc -w 3 {addr} {port} </dev/null', check=False)
            if r.returncode == 0 and r.stdout.strip():
                return r.stdout.strip().removeprefix('::ffff:')
            last = r
            time.sleep(0.3)
        raise RuntimeError(f'no answer from {addr} inside {name}: {last.stderr}')

    def close(self):
        for name in self.names:
            self.podman('rm', '-f', '-t', '0', name, check=False)
        # The netns files podman made for our containers (named in the CNI calls it made).
        for c in self.calls():
            ns = c['netns']
            if ns.startswith('/run/netns/netns-') and os.path.exists(ns):
                subprocess.run(['umount', ns], capture_output=True)
                try:
                    os.unlink(ns)
                except OSError:
                    pass
        cn.unmount_under(self.tmp)
        if not self.had_blob_cache and os.path.exists(BLOB_CACHE):
            os.unlink(BLOB_CACHE)
        if not self.had_var_lib_containers:
            shutil.rmtree('/var/lib/containers', ignore_errors=True)
        for f in os.listdir('/var/lib/cni/results') if os.path.isdir('/var/lib/cni/results') else []:
            if any(c['id'] in f for c in self.calls()):
                os.unlink(os.path.join('/var/lib/cni/results', f))


def leftovers(tmp):
    found = []
    with open('/proc/self/mounts') as f:
        found += [line.split()[1] for line in f if line.split()[1].startswith(tmp)]
    return found
