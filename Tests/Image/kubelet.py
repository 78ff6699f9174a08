"""What a kubelet does with cni-conf/ip-masq-daemonset.yaml's pod, over CRI, on a throwaway node (for the image tier).

    from kubelet import Manifest, NodeDirs, NodeContainerd, DaemonSetPod
    m = Manifest('cni-conf/ip-masq-daemonset.yaml')          # the DaemonSet's pod spec and the ConfigMap's data
    dirs = NodeDirs(tmp)                                      # stand-ins for the node's /etc/cni, /opt, /run
    cd = NodeContainerd(world.node, tmp, dirs)                # containerd whose mount namespace sees them there
    pod = DaemonSetPod(cd, m, dirs, image)                    # sandbox, init container "install", container "agent"

The node: containerd runs in the test's node network namespace and in a private mount namespace in which
the test's directories are bind-mounted over /etc/cni, /opt and /run. So the manifest's hostPath volumes are
used as written (hostPath /etc/cni/ip-masq is the test's directory), the plugin that containerd runs for pods
reads the same /etc/cni/ip-masq/config and /run/cni state the agent container sees, and nothing of the
machine's own /etc/cni, /opt or /run is touched. The mount namespace ends with containerd and its shims.

The pod is built from the manifest as a kubelet would: commands, hostPath/configMap/emptyDir volume mounts,
securityContext (privileged, capabilities, readOnlyRootFilesystem, allowPrivilegeEscalation, seccomp),
resources (CPU shares/quota, memory limit), the liveness probe's command (run with ExecSync), and the
termination grace period (StopContainer's timeout). The ConfigMap volume is written the kubelet's way
(AtomicWriter: a timestamped directory, `..data` symlink swapped atomically, `config -> ..data/config`).
"""
import ctypes
import os
import shutil
import signal
import struct
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), 'Runtime'))
import containerd_node as cn  # noqa: E402
import cri  # noqa: E402
import yaml  # noqa: E402  (PyYAML: from the manifest-validation venv)


# --- the manifest -----------------------------------------------------------------------------------------------


class Manifest:
    def __init__(self, path):
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        self.configmap = next(d for d in docs if d['kind'] == 'ConfigMap')
        self.daemonset = next(d for d in docs if d['kind'] == 'DaemonSet')
        self.spec = self.daemonset['spec']['template']['spec']
        self.install = self.spec['initContainers'][0]
        self.agent = self.spec['containers'][0]
        self.volumes = {v['name']: v for v in self.spec['volumes']}
        self.grace = int(self.spec.get('terminationGracePeriodSeconds', 30))

    def host_path(self, name):
        return self.volumes[name].get('hostPath', {}).get('path')

    def mount_of(self, container, name):
        return next(m['mountPath'] for m in container['volumeMounts'] if m['name'] == name)


def quantity_cpu_millis(text):
    text = str(text)
    return int(text[:-1]) if text.endswith('m') else int(float(text) * 1000)


def quantity_bytes(text):
    text = str(text)
    for suffix, factor in (('Ki', 1 << 10), ('Mi', 1 << 20), ('Gi', 1 << 30)):
        if text.endswith(suffix):
            return int(text[:-2]) * factor
    return int(text)


# --- the node's directories -------------------------------------------------------------------------------------


class NodeDirs:
    """The node's /etc/cni, /opt and /run (bind-mounted there for containerd) and the kubelet's pod volumes."""
    MOUNTED = ('/etc/cni', '/opt', '/run')

    def __init__(self, tmp):
        self.tmp = tmp
        self.root = os.path.join(tmp, 'node')
        for path in self.MOUNTED:
            os.makedirs(self.root + path, exist_ok=True)
        self.kubelet = os.path.join(tmp, 'kubelet')
        os.makedirs(self.kubelet, exist_ok=True)

    def node(self, path):
        """Where the test reaches the node path `path` (/etc/cni/net.d -> TMP/node/etc/cni/net.d)."""
        if not any(path == m or path.startswith(m + '/') for m in self.MOUNTED):
            raise ValueError(f'{path} is not under a mounted node directory {self.MOUNTED}')
        return self.root + path

    def host_path_volume(self, volume):
        """Creates a hostPath volume as the kubelet does for DirectoryOrCreate / FileOrCreate."""
        hp = volume['hostPath']
        path = self.node(hp['path'])
        kind = hp.get('type', '')
        if kind == 'DirectoryOrCreate':
            os.makedirs(path, mode=0o755, exist_ok=True)
        elif kind == 'FileOrCreate':
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if not os.path.exists(path):
                open(path, 'a').close()
                os.chmod(path, 0o644)
        return hp['path']

    def configmap_volume(self, name, data):
        """A ConfigMap volume's directory, written like the kubelet's AtomicWriter."""
        d = os.path.join(self.kubelet, 'configmap-' + name)
        os.makedirs(d, exist_ok=True)
        self.write_configmap(d, data)
        return d

    @staticmethod
    def write_configmap(d, data):
        """Replaces the ConfigMap's files at once: a new timestamped dir, then `..data` renamed over."""
        stamp = '..' + time.strftime('%Y_%m_%d_%H_%M_%S.') + str(time.monotonic_ns())
        os.makedirs(os.path.join(d, stamp))
        for key, value in data.items():
            with open(os.path.join(d, stamp, key), 'w') as f:
                f.write(value)
        old = os.readlink(os.path.join(d, '..data')) if os.path.lexists(os.path.join(d, '..data')) else None
        os.symlink(stamp, os.path.join(d, '..data_tmp'))
        os.rename(os.path.join(d, '..data_tmp'), os.path.join(d, '..data'))
        for key in data:
            if not os.path.lexists(os.path.join(d, key)):
                os.symlink(os.path.join('..data', key), os.path.join(d, key))
        if old:
            shutil.rmtree(os.path.join(d, old))

    def empty_dir(self, name):
        d = os.path.join(self.kubelet, 'emptydir-' + name)
        os.makedirs(d, exist_ok=True)
        return d


class NodeContainerd(cn.Containerd):
    """containerd in the node network namespace and a private mount namespace with NodeDirs mounted over
    /etc/cni, /opt and /run. The runtime tier's daemon setup otherwise (config, cleanup)."""

    def __init__(self, node, tmp, dirs, image=cn.IMAGE):
        self.dirs = dirs
        super().__init__(node, tmp, cni_bin_dir=dirs.node('/opt/cni/bin'), cni_conf_dir=dirs.node('/etc/cni/net.d'),
                         image=image)

    def command(self):
        binds = ' && '.join(f'mount --bind {self.dirs.root + p} {p}' for p in NodeDirs.MOUNTED)
        return ['nsenter', '--net=' + self.node.path, 'unshare', '--mount', '--propagation', 'private',
                'sh', '-c', binds + ' && exec containerd "$@"', 'containerd',
                '--config', self.config, '--log-level', 'info']

    def on_node(self, *argv, check=True):
        """Runs a command as a program on the node: containerd's network and mount namespaces."""
        r = subprocess.run(['nsenter', '-t', str(self.proc.pid), '--net', '--mount'] + [str(a) for a in argv],
                           capture_output=True, text=True)
        if check and r.returncode != 0:
            raise RuntimeError(f'on the node: {" ".join(map(str, argv))} failed ({r.returncode}): {r.stderr}{r.stdout}')
        return r

    def container_pid(self, container_id):
        """The container's init process (runc's state under our runc root)."""
        import json
        with open(os.path.join(self.tmp, 'runc', 'k8s.io', container_id, 'state.json')) as f:
            return int(json.load(f)['init_process_pid'])


# --- CRI messages for the manifest's containers -----------------------------------------------------------------


def container_config(container, mounts, log_path, seccomp_runtime_default=True):
    """A ContainerConfig from a manifest container, as a kubelet builds it. mounts: [(host, inside, readonly)]."""
    sc = container.get('securityContext', {})
    caps = sc.get('capabilities', {})
    capability = cri.Msg((1, list(caps.get('add', [])) or None), (2, list(caps.get('drop', [])) or None))
    security = cri.Msg(
        (1, capability),
        (2, bool(sc.get('privileged', False))),
        (3, cri.Msg((1, cri.NODE), (2, cri.CONTAINER), (3, cri.POD))),  # hostNetwork; own PID namespace
        (7, bool(sc.get('readOnlyRootFilesystem', False))),
        (11, sc.get('allowPrivilegeEscalation', True) is False),          # no_new_privs
        (15, cri.Msg((1, 0)) if seccomp_runtime_default else None),       # seccomp RuntimeDefault
    )
    res = container.get('resources', {})
    limits, requests = res.get('limits', {}), res.get('requests', {})
    period = 100000
    resources = cri.Msg(
        (1, period if 'cpu' in limits else 0),
        (2, quantity_cpu_millis(limits['cpu']) * period // 1000 if 'cpu' in limits else 0),
        (3, max(2, quantity_cpu_millis(requests.get('cpu', '0')) * 1024 // 1000)),
        (4, quantity_bytes(limits['memory']) if 'memory' in limits else 0),
    )
    mount_msgs = [cri.Msg((1, inside), (2, host), (3, bool(ro))) for host, inside, ro in mounts]
    return cri.Msg(
        (1, cri.Msg((1, container['name']), (2, 0))),
        (2, cri.Msg((1, container['image']))),
        (3, list(container['command'])),
        (4, list(container.get('args', [])) or None),
        (7, mount_msgs),
        (9, {'io.kubernetes.container.name': container['name']}),
        (11, log_path),
        (15, cri.Msg((1, resources), (2, security))),
    )


def wait_exited(client, container_id, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        st = client.container_status(container_id)
        if st['state'] == 'EXITED':
            return st
        if time.monotonic() > deadline:
            raise RuntimeError(f'container {container_id[:12]} still {st["state"]} after {timeout} s')
        time.sleep(0.1)


class DaemonSetPod:
    """The DaemonSet's pod on the node: a hostNetwork sandbox, `install` run to completion, then `agent`."""

    def __init__(self, cd, manifest, dirs, image, configmap_dir, heartbeat_dir, attempt=0, install_command=None):
        self.cd, self.m, self.dirs, self.image = cd, manifest, dirs, image
        self.logs = os.path.join(cd.tmp, 'logs', f'ip-masq-{attempt}')
        os.makedirs(self.logs, exist_ok=True)
        self.sandbox_config = cri.sandbox_config('ip-masq-node', uid=f'ip-masq-uid-{attempt}', namespace='kube-system',
                                                 host_network=True, attempt=attempt, log_directory=self.logs)
        self.configmap_dir, self.heartbeat_dir = configmap_dir, heartbeat_dir
        self.pod = cd.client.run_pod_sandbox(self.sandbox_config)
        cd.sandboxes.add(self.pod)
        self.agent_id = None
        self.install_status = self.run_install(install_command)

    def mounts(self, container):
        """The container's volumeMounts as CRI mounts: hostPath volumes at their node path (containerd's mount
        namespace has the test's directories there), the ConfigMap and emptyDir as the kubelet's directories."""
        out = []
        for vm in container['volumeMounts']:
            volume = self.m.volumes[vm['name']]
            if 'hostPath' in volume:
                host = self.dirs.host_path_volume(volume)
            elif 'configMap' in volume:
                host = self.configmap_dir
            elif 'emptyDir' in volume:
                host = self.heartbeat_dir
            else:
                raise ValueError(f'volume kind of {vm["name"]} not handled')
            out.append((host, vm['mountPath'], bool(vm.get('readOnly', False))))
        return out

    def run_install(self, command=None):
        container = dict(self.m.install, image=self.image)
        if command:
            container['command'] = command
        config = container_config(container, self.mounts(self.m.install), 'install.log')
        cid = self.cd.client.create_container(self.pod, config, self.sandbox_config)
        self.cd.client.start_container(cid)
        status = wait_exited(self.cd.client, cid)
        status['log'] = self.log('install.log')
        status['id'] = cid
        return status

    def start_agent(self):
        container = dict(self.m.agent, image=self.image)
        config = container_config(container, self.mounts(self.m.agent), 'agent.log')
        self.agent_id = self.cd.client.create_container(self.pod, config, self.sandbox_config)
        self.cd.client.start_container(self.agent_id)
        return self.agent_id

    def probe(self):
        """The liveness probe as the kubelet runs it: ExecSync of its command, with its timeout."""
        p = self.m.agent['livenessProbe']
        return self.cd.client.exec_sync(self.agent_id, p['exec']['command'], timeout=int(p.get('timeoutSeconds', 1)))

    def log(self, name):
        """A container's log lines (the CRI log format's message part)."""
        try:
            with open(os.path.join(self.logs, name)) as f:
                return [line.rstrip('\n').split(' ', 3)[-1] for line in f]
        except OSError:
            return []

    def stop(self):
        """What the kubelet does on pod deletion: StopContainer with the grace period, then the sandbox."""
        started = time.monotonic()
        if self.agent_id:
            self.cd.client.stop_container(self.agent_id, timeout=self.m.grace)
        elapsed = time.monotonic() - started
        status = self.cd.client.container_status(self.agent_id) if self.agent_id else None
        self.cd.client.stop_pod_sandbox(self.pod)
        self.cd.client.remove_pod_sandbox(self.pod)
        return elapsed, status


# --- inotify, to see how files appear -----------------------------------------------------------------------------

IN_MODIFY, IN_CLOSE_WRITE, IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x2, 0x8, 0x40, 0x80, 0x100, 0x200
EVENT_NAMES = {IN_MODIFY: 'MODIFY', IN_CLOSE_WRITE: 'CLOSE_WRITE', IN_MOVED_FROM: 'MOVED_FROM',
               IN_MOVED_TO: 'MOVED_TO', IN_CREATE: 'CREATE', IN_DELETE: 'DELETE'}


class DirWatch:
    """inotify on directories: which names were created, written, renamed in or deleted."""

    def __init__(self, *dirs):
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), 'inotify_init1')
        self.dirs = {}
        mask = IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
        for d in dirs:
            wd = self.libc.inotify_add_watch(self.fd, d.encode(), mask)
            if wd < 0:
                raise OSError(ctypes.get_errno(), f'inotify_add_watch {d}')
            self.dirs[wd] = d
        self.events = []

    def read(self):
        """Every event so far: [(dir, name, [event names])]."""
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            i = 0
            while i < len(data):
                wd, mask, _cookie, length = struct.unpack_from('iIII', data, i)
                name = data[i + 16:i + 16 + length].rstrip(b'\0').decode()
                self.events.append((self.dirs.get(wd, '?'), name,
                                    [n for bit, n in EVENT_NAMES.items() if mask & bit]))
                i += 16 + length
        return self.events

    def of(self, d, name):
        return [e for dd, n, ev in self.read() if dd == d and n == name for e in ev]

    def close(self):
        os.close(self.fd)


def signal_process(pid, sig):
    os.kill(pid, sig)


__all__ = ['Manifest', 'NodeDirs', 'NodeContainerd', 'DaemonSetPod', 'DirWatch', 'signal', 'signal_process']
