"""A throwaway "node" (network namespaces) with containerd's CRI plugin running inside it, for tests, the demo
and the benchmark. Root only. Everything containerd writes goes under one temporary directory; `close()` removes
every sandbox, stops the daemon by PID, unmounts what is mounted under the directory, and removes what libcni and
containerd wrote outside it for our pods (/var/lib/cni/results/<net>-*, /run/containerd/s/<shim sockets>).

    from containerd_node import Netns, World, Containerd
    world = World('rt', ipv6=True)               # node + "internet" (203.0.113.2) + "private" (192.168.77.2) hosts
    cd = Containerd(world.node, tmp='/tmp/x', cni_bin_dir=None, cni_conf_dir=None)   # defaults under tmp
    cd.link_cni_plugins(plugin='/path/ip-masq')  # bin dir: loopback, bridge, host-local, portmap + ip-masq
    cd.write_conflist(text)                      # atomically (temp name + rename: containerd reloads on inotify)
    c = cd.start()                               # a cri.Client; `cd.import_image(archive)` then
    pod, ctr, sb = cd.run_pod('pod1')            # RunPodSandbox + CreateContainer + StartContainer (busybox sleep)
    cd.run_pod('agent', host_network=True, privileged=True, mounts=[(host, inside, ro)], command=[...])
    cd.remove_pod(pod)                           # StopPodSandbox + RemovePodSandbox (what kubelet does)
    cd.restart()                                 # SIGTERM, wait, start again (pods keep running)
    cd.close(); world.close()

`World.serve()` starts a TCP server in each host that answers with the source address it saw;
`seen_from(cd, ctr, host_addr)` asks it from inside a pod's container (ExecSync busybox nc).
"""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cri  # noqa: E402

REFERENCE_PLUGINS = '/usr/lib/cni'
IMAGE = 'localhost/bb:1'


def sh(*args, check=True, input=None, ns=None, capture=True, env=None):
    """Runs a command (inside netns `ns` via `ip netns exec` for tools); returns CompletedProcess."""
    argv = (['ip', 'netns', 'exec', ns] if ns else []) + [str(a) for a in args]
    r = subprocess.run(argv, input=input, capture_output=capture, text=True, env=env)
    if check and r.returncode != 0:
        raise RuntimeError(f'failed ({r.returncode}): {" ".join(argv)}\n{r.stderr}{r.stdout}')
    return r


class Netns:
    def __init__(self, label):
        self.name = f'ipmrt-{label}-{os.getpid()}-{uuid.uuid4().hex[:4]}'
        sh('ip', 'netns', 'add', self.name)
        sh('ip', 'link', 'set', 'lo', 'up', ns=self.name)

    @property
    def path(self):
        return '/run/netns/' + self.name

    def run(self, *args, check=True, input=None):
        return sh(*args, check=check, input=input, ns=self.name)

    def close(self):
        sh('ip', 'netns', 'del', self.name, check=False)


SERVER = r'''
import socket, sys, threading
addr, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ':' in addr else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((addr, port)); s.listen(64)
print('ready', flush=True)
def answer(c, peer):
    try:
        c.settimeout(5); c.sendall((peer[0] + '\n').encode())
    finally:
        c.close()
while True:
    c, peer = s.accept()
    threading.Thread(target=answer, args=(c, peer), daemon=True).start()
'''


class World:
    """A node namespace linked to an "internet" host (masqueraded destination) and a "private" host in
    192.168.0.0/16 / fd00::/8 (non-masquerade destination). Both route the pod ranges back via the node."""
    INTERNET4, PRIVATE4 = '203.0.113.2', '192.168.77.2'
    INTERNET6, PRIVATE6 = '2001:db8:113::2', 'fd00:77::2'
    NODE_INTERNET4, NODE_INTERNET6 = '203.0.113.1', '2001:db8:113::1'
    POD4, POD6 = '10.244.0.0/16', 'fd00:10:244::/48'

    def __init__(self, label='rt', ipv6=False):
        self.ipv6 = ipv6
        self.servers = []
        self.node = Netns(label + 'node')
        self.internet = Netns(label + 'inet')
        self.private = Netns(label + 'priv')
        try:
            self.node.run('sysctl', '-q', '-w', 'net.ipv4.ip_forward=1')
            if ipv6:
                self.node.run('sysctl', '-q', '-w', 'net.ipv6.conf.all.forwarding=1')
            self._link(self.internet, 'to-inet', '203.0.113.1', self.INTERNET4, '2001:db8:113::1', self.INTERNET6)
            self._link(self.private, 'to-priv', '192.168.77.1', self.PRIVATE4, 'fd00:77::1', self.PRIVATE6)
        except Exception:
            self.close()
            raise

    def _link(self, host, dev, node4, host4, node6, host6):
        n, h = self.node, host
        n.run('ip', 'link', 'add', dev, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', h.name)
        n.run('ip', 'addr', 'add', node4 + '/24', 'dev', dev)
        h.run('ip', 'addr', 'add', host4 + '/24', 'dev', 'eth0')
        if self.ipv6:
            for ns in (n, h):
                ns.run('sysctl', '-q', '-w', 'net.ipv6.conf.all.accept_dad=0')
                ns.run('sysctl', '-q', '-w', 'net.ipv6.conf.default.accept_dad=0')
            n.run('ip', '-6', 'addr', 'add', node6 + '/64', 'dev', dev, 'nodad')
            h.run('ip', '-6', 'addr', 'add', host6 + '/64', 'dev', 'eth0', 'nodad')
        n.run('ip', 'link', 'set', dev, 'up')
        h.run('ip', 'link', 'set', 'eth0', 'up')
        h.run('ip', 'route', 'add', self.POD4, 'via', node4)
        if self.ipv6:
            h.run('ip', '-6', 'route', 'add', self.POD6, 'via', node6)

    def serve(self, port=8080):
        """Starts the answering server on both hosts (and both families with ipv6)."""
        for host, addrs in ((self.internet, [self.INTERNET4, self.INTERNET6]),
                            (self.private, [self.PRIVATE4, self.PRIVATE6])):
            for addr in addrs[:2 if self.ipv6 else 1]:
                p = subprocess.Popen(['ip', 'netns', 'exec', host.name, sys.executable, '-c', SERVER, addr,
                                      str(port)], stdout=subprocess.PIPE, text=True)
                if p.stdout.readline().strip() != 'ready':
                    raise RuntimeError(f'server on {addr} did not start')
                self.servers.append(p)

    def close(self):
        for p in self.servers:
            p.kill()
            p.wait()
        self.servers = []
        for ns in (getattr(self, n, None) for n in ('internet', 'private', 'node')):
            if ns:
                ns.close()


def seen_from(cd, container_id, addr, port=8080, tries=3):
    """The source address `addr`'s server saw for a TCP connection from inside the container."""
    last = None
    for _ in range(tries):
        r = cd.client.exec_sync(container_id, ['sh', '-c', f'nc -w 3 {addr} {port} </dev/null'], timeout=10)
        out = r['stdout'].decode().strip()
        if r['exit_code'] == 0 and out:
            return out.removeprefix('::ffff:')
        last = r
        time.sleep(0.3)
    raise RuntimeError(f'no answer from {addr}:{port} inside {container_id[:12]}: {last}')


CONFIG = '''version = 2
root = "{tmp}/containerd/root"
state = "{tmp}/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{tmp}/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{image}"
  disable_apparmor = true
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{tmp}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin_dir}"
    conf_dir = "{conf_dir}"
    max_conf_num = 1
'''

WRAPPER = '''#!/bin/bash
# Records each call containerd makes (verb, environment, stdin, wall time) then runs the real plugin.
log={log}
in=$(cat)
start=$(date +%s%N)
out=$(printf '%s' "$in" | {plugin} 2>{stderr_to})
status=$?
end=$(date +%s%N)
# One line per call, in one write (concurrent calls append whole lines): the fields, then stdin on one line.
printf '%s\\t%s\\t%s\\t%s\\t%s\\t%s\\t%s\\t%s\\n' "$CNI_COMMAND" "$CNI_CONTAINERID" "$CNI_NETNS" "$CNI_IFNAME" \\
  "$CNI_ARGS" "$status" "$((end - start))" "${{in//$'\\n'/ }}" >>"$log"
printf '%s' "$out"
exit $status
'''


class Containerd:
    """containerd (CRI) in the node namespace; every dir under `tmp`."""

    def __init__(self, node, tmp, cni_bin_dir=None, cni_conf_dir=None, image=IMAGE):
        self.node, self.tmp, self.image = node, tmp, image
        self.bin_dir = cni_bin_dir or os.path.join(tmp, 'cni', 'bin')
        self.conf_dir = cni_conf_dir or os.path.join(tmp, 'net.d')
        self.sock = os.path.join(tmp, 'containerd.sock')
        self.config = os.path.join(tmp, 'containerd.toml')
        self.log_path = os.path.join(tmp, 'containerd.log')
        self.calls_log = os.path.join(tmp, 'cni-calls.log')
        self.proc = None
        self.client = None
        self.networks = set()      # conflist names, for /var/lib/cni/results cleanup
        self.sandboxes = set()     # every sandbox ID we created (shim socket cleanup)
        os.makedirs(self.bin_dir, exist_ok=True)
        os.makedirs(self.conf_dir, exist_ok=True)

    # -- CNI dirs ----------------------------------------------------------------------------------------------
    def link_cni_plugins(self, plugin=None, record=False, plugins=('loopback', 'bridge', 'host-local', 'portmap',
                                                                    'ptp')):
        """Symlinks the reference plugins into bin_dir, and ip-masq (`plugin`) directly or, with record=True,
        behind a wrapper that logs every call to `calls_log` (with its wall time in ns)."""
        for name in plugins:
            dst = os.path.join(self.bin_dir, name)
            if not os.path.lexists(dst):
                os.symlink(os.path.join(REFERENCE_PLUGINS, name), dst)
        if plugin:
            dst = os.path.join(self.bin_dir, 'ip-masq')
            if os.path.lexists(dst):
                os.unlink(dst)
            if record:
                with open(dst, 'w') as f:
                    f.write(WRAPPER.format(log=self.calls_log, plugin=os.path.abspath(plugin),
                                           stderr_to='/dev/stderr'))
                os.chmod(dst, 0o755)
            else:
                os.symlink(os.path.abspath(plugin), dst)

    def write_conflist(self, text, name='10-net.conflist'):
        """Writes a conflist atomically (temp file + rename), as containerd reloads on every inotify write."""
        try:
            self.networks.add(json.loads(text)['name'])
        except (ValueError, KeyError, TypeError):
            pass
        tmp = os.path.join(self.conf_dir, '.' + name + '.tmp')
        with open(tmp, 'w') as f:
            f.write(text)
        os.rename(tmp, os.path.join(self.conf_dir, name))

    def calls(self):
        """The recorded plugin calls: [{'verb','id','netns','ifname','args','status','ns','stdin'}]."""
        if not os.path.exists(self.calls_log):
            return []
        keys = ['verb', 'id', 'netns', 'ifname', 'args', 'status', 'ns', 'stdin']
        out = []
        with open(self.calls_log) as f:
            for line in f:
                if line.strip():
                    d = dict(zip(keys, line.rstrip('\n').split('\t', len(keys) - 1)))
                    d['status'], d['ns'] = int(d['status']), int(d['ns'])
                    out.append(d)
        return out

    # -- the daemon --------------------------------------------------------------------------------------------
    def command(self):
        """The daemon's command line. nsenter, not `ip netns exec`: the latter remounts /sys, which hides the cgroup
        tree from runc."""
        return ['nsenter', '--net=' + self.node.path, 'containerd', '--config', self.config, '--log-level', 'info']

    def start(self, timeout=30):
        with open(self.config, 'w') as f:
            f.write(CONFIG.format(tmp=self.tmp, sock=self.sock, image=self.image, bin_dir=self.bin_dir,
                                  conf_dir=self.conf_dir))
        log = open(self.log_path, 'a')
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        log.close()
        self.client = cri.Client(self.sock)
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.sock):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError('containerd did not start:\n' + self.log_tail())
            time.sleep(0.05)
        self.client.wait_ready(timeout)
        self._wait_network_ready(timeout)
        return self.client

    def _wait_network_ready(self, timeout):
        # The CRI plugin loads the CNI config asynchronously; a RunPodSandbox before that fails with
        # "cni plugin not initialized". Status's NetworkReady condition tells when it is loaded.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            f = self.client.call('Status', cri.Msg((1, False)))
            st = cri.dec(f[1][0]) if 1 in f else {}
            conds = {cri._str(cri.dec(c), 1): cri._int(cri.dec(c), 2) for c in st.get(1, [])}
            if conds.get('NetworkReady') or not os.listdir(self.conf_dir):
                return
            time.sleep(0.05)

    def log_tail(self, n=40):
        try:
            with open(self.log_path) as f:
                return ''.join(f.readlines()[-n:])
        except OSError:
            return ''

    def stop(self, timeout=20):
        """Stops the daemon (SIGTERM, then SIGKILL) by its PID; running pods (shims) stay."""
        if self.client:
            self.client.close()
            self.client = None
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self):
        self.stop()
        return self.start()

    def import_image(self, archive):
        sh('ctr', '--address', self.sock, '-n', 'k8s.io', 'images', 'import', archive)

    # -- pods --------------------------------------------------------------------------------------------------
    def run_sandbox(self, name, host_network=False, privileged=False, uid=None, namespace='default',
                    log_directory=None):
        config = cri.sandbox_config(name, uid=uid or f'{name}-{uuid.uuid4().hex[:8]}', namespace=namespace,
                                    host_network=host_network, privileged=privileged, log_directory=log_directory)
        pod = self.client.run_pod_sandbox(config)
        self.sandboxes.add(pod)
        return pod, config

    def run_pod(self, name, host_network=False, privileged=False, mounts=None, command=None, image=None,
                envs=None, logs=False):
        """A sandbox with one started container (the image's sleep unless `command`): (pod, container, config).
        logs=True: the container's stdout/stderr go to TMP/logs/<name>/main.log (CRI log format)."""
        log_directory = os.path.join(self.tmp, 'logs', name) if logs else None
        pod, config = self.run_sandbox(name, host_network, privileged, log_directory=log_directory)
        ctr = self.client.create_container(pod, cri.container_config('main', image or self.image, command=command,
                                                                     mounts=mounts, privileged=privileged,
                                                                     envs=envs,
                                                                     log_path='main.log' if logs else None),
                                           config)
        self.client.start_container(ctr)
        return pod, ctr, config

    def remove_pod(self, pod):
        """What a kubelet does when a pod is deleted: StopPodSandbox, then RemovePodSandbox."""
        self.client.stop_pod_sandbox(pod)
        self.client.remove_pod_sandbox(pod)

    def pod_ips(self, pod):
        st = self.client.pod_sandbox_status(pod)
        return [ip for ip in [st['ip']] + st['additional_ips'] if ip]

    # -- cleanup -----------------------------------------------------------------------------------------------
    def remove_all_pods(self):
        if not self.client:
            return
        for sb in self.client.list_pod_sandbox():
            for attempt in range(3):
                try:
                    self.remove_pod(sb['id'])
                    break
                except Exception:
                    time.sleep(0.5)

    def _shim_socket(self, sandbox_id):
        # containerd 1.6 names a shim's socket after sha256(<grpc address>/<namespace>/<id>).
        h = hashlib.sha256(os.path.join(self.sock, 'k8s.io', sandbox_id).encode()).hexdigest()
        return '/run/containerd/s/' + h

    def close(self):
        """Removes every sandbox, stops the daemon, kills shims of ours left over, unmounts, cleans outside dirs."""
        try:
            if self.proc and self.proc.poll() is None and self.client:
                self.remove_all_pods()
        except Exception as e:  # the daemon may be broken: keep cleaning
            print(f'containerd_node: removing pods failed: {e}', file=sys.stderr)
        self.stop()
        # Shims (and the containers under them) started by this daemon: found by our unique socket path.
        for pid in _pids_with_arg(self.sock):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        runc_root = os.path.join(self.tmp, 'runc')
        for pid in _container_init_pids(runc_root):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        unmount_under(self.tmp)
        for sb in self.sandboxes:
            for path in (self._shim_socket(sb),):
                if os.path.exists(path):
                    os.unlink(path)
        for net in self.networks:
            d = '/var/lib/cni/results'
            if os.path.isdir(d):
                for f in os.listdir(d):
                    if f.startswith(net + '-') and any(sb in f for sb in self.sandboxes):
                        os.unlink(os.path.join(d, f))
        for d in ('/run/containerd/s', '/run/containerd', '/var/lib/cni/results', '/var/lib/cni'):
            try:
                os.rmdir(d)  # only when empty: others may use them
            except OSError:
                pass


def _pids_with_arg(needle):
    out = []
    for pid in os.listdir('/proc'):
        if not pid.isdigit():
            continue
        try:
            with open(f'/proc/{pid}/cmdline', 'rb') as f:
                args = f.read().split(b'\0')
        except OSError:
            continue
        if any(needle.encode() in a for a in args):
            out.append(int(pid))
    return out


def _container_init_pids(runc_root):
    """PIDs of container init processes runc recorded under our runc root (state.json 'init_process_pid')."""
    out = []
    if not os.path.isdir(runc_root):
        return out
    for d in os.listdir(runc_root):
        try:
            with open(os.path.join(runc_root, d, 'state.json')) as f:
                out.append(int(json.load(f)['init_process_pid']))
        except (OSError, ValueError, KeyError):
            pass
    return out


def unmount_under(directory):
    """Lazily unmounts every mount point at or below `directory` (deepest first)."""
    directory = os.path.realpath(directory)
    with open('/proc/self/mounts') as f:
        points = [line.split()[1].encode().decode('unicode_escape') for line in f]
    for p in sorted({p for p in points if p == directory or p.startswith(directory + '/')}, key=len,
                    reverse=True):
        subprocess.run(['umount', '-l', p], capture_output=True)


def leftovers(tmp, networks=()):
    """What a finished run must not leave: mounts under tmp, results files of our networks."""
    found = []
    with open('/proc/self/mounts') as f:
        found += [line.split()[1] for line in f if line.split()[1].startswith(tmp)]
    if os.path.isdir('/var/lib/cni/results'):
        found += [f for f in os.listdir('/var/lib/cni/results') if any(f.startswith(n + '-') for n in networks)]
    return found
