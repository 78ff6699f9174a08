"""A small CRI v1 client (the calls a kubelet makes for pods), over gRPC with our own protobuf encoding.

Needs `grpcio` (pip; `.ci/test` installs it into the scratch dir and sets PYTHONPATH). No generated code: the
messages of k8s.io/cri-api `runtime.v1` that we use are encoded and decoded by hand below (field numbers are the
API's public wire contract).

    import cri
    c = cri.Client('/tmp/x/containerd.sock')
    c.version()                                   # {'version':..., 'runtime_name': 'containerd', ...}
    sb = cri.sandbox_config('pod1', uid='u1', namespace='default')              # pod network
    sb = cri.sandbox_config('agent', host_network=True, privileged=True)        # hostNetwork pod
    pod = c.run_pod_sandbox(sb)
    c.pod_sandbox_status(pod)                     # {'id', 'state': 'READY'|'NOTREADY', 'ip', 'additional_ips', ...}
    ctr = c.create_container(pod, cri.container_config('main', 'localhost/bb:1', command=['/bin/sleep', '1000'],
                             mounts=[('/host/run', '/run', False)], privileged=False), sb)
    c.start_container(ctr)
    out = c.exec_sync(ctr, ['sh', '-c', 'echo hi'], timeout=10)   # {'stdout': b'hi\\n', 'stderr': b'', 'exit_code': 0}
    c.stop_container(ctr); c.remove_container(ctr)
    c.stop_pod_sandbox(pod); c.remove_pod_sandbox(pod)
    c.list_pod_sandbox()                          # [{'id', 'name', 'namespace', 'uid', 'state'}, ...]

Errors from the runtime raise `grpc.RpcError` (with `.code()` and `.details()`).
"""
try:
    import grpc
except ImportError:  # reported when a client is made (so a non-root run can still say it did not run)
    grpc = None

RUNTIME = '/runtime.v1.RuntimeService/'

# --- protobuf wire format (the subset we need) ----------------------------------------------------------------


def _varint(n):
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(field, wire):
    return _varint(field << 3 | wire)


def enc(*fields):
    """Encodes a message from (field_number, value) pairs. str/bytes: length-delimited; bool/int: varint;
    Msg: a nested message; list: repeated (each element as above); dict: a map<string,string>. None and
    proto3 defaults ('' / 0 / False / empty) are left out, as proto3 does."""
    out = bytearray()
    for field, value in fields:
        items = value if isinstance(value, list) else [value]
        for v in items:
            if v is None:
                continue
            if isinstance(v, dict):
                for k, val in v.items():
                    entry = enc((1, k), (2, val))
                    out += _key(field, 2) + _varint(len(entry)) + entry
            elif isinstance(v, Msg):
                out += _key(field, 2) + _varint(len(v.data)) + v.data
            elif isinstance(v, str):
                if v or isinstance(value, list):
                    data = v.encode()
                    out += _key(field, 2) + _varint(len(data)) + data
            elif isinstance(v, (bytes, bytearray)):
                if v or isinstance(value, list):
                    out += _key(field, 2) + _varint(len(v)) + bytes(v)
            elif isinstance(v, bool):
                if v:
                    out += _key(field, 0) + _varint(1)
            elif isinstance(v, int):
                if v:
                    out += _key(field, 0) + _varint(v)
            else:
                raise TypeError(f'cannot encode field {field}: {v!r}')
    return bytes(out)


class Msg:
    """A nested message (already encoded)."""
    def __init__(self, *fields):
        self.data = enc(*fields)


def dec(data):
    """Decodes a message into {field_number: [values]} (varints as int, length-delimited as bytes)."""
    fields, i = {}, 0
    while i < len(data):
        key, i = _read_varint(data, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(data, i)
        elif wire == 2:
            n, i = _read_varint(data, i)
            value, i = bytes(data[i:i + n]), i + n
        elif wire == 1:
            value, i = bytes(data[i:i + 8]), i + 8
        elif wire == 5:
            value, i = bytes(data[i:i + 4]), i + 4
        else:
            raise ValueError(f'unsupported wire type {wire}')
        fields.setdefault(field, []).append(value)
    return fields


def _read_varint(data, i):
    shift = result = 0
    while True:
        b = data[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _str(fields, n, default=''):
    return fields[n][-1].decode() if n in fields else default


def _int(fields, n, default=0):
    if n not in fields:
        return default
    v = fields[n][-1]
    return v - (1 << 64) if v >= 1 << 63 else v


def _map(fields, n):
    out = {}
    for entry in fields.get(n, []):
        e = dec(entry)
        out[_str(e, 1)] = _str(e, 2)
    return out


# --- message builders --------------------------------------------------------------------------------------------

POD, CONTAINER, NODE = 0, 1, 2
SANDBOX_STATES = {0: 'READY', 1: 'NOTREADY'}
CONTAINER_STATES = {0: 'CREATED', 1: 'RUNNING', 2: 'EXITED', 3: 'UNKNOWN'}


def sandbox_config(name, uid=None, namespace='default', attempt=0, host_network=False, privileged=False,
                   hostname=None, labels=None, annotations=None, log_directory=None):
    """A PodSandboxConfig as a kubelet sends it (metadata, hostname, labels, Linux security context)."""
    namespaces = Msg((1, NODE if host_network else POD), (2, CONTAINER), (3, POD))
    security = Msg((1, namespaces), (6, privileged))
    linux = Msg((1, ''), (2, security))
    return Msg(
        (1, Msg((1, name), (2, uid or name + '-uid'), (3, namespace), (4, attempt))),
        (2, hostname if hostname is not None else ('' if host_network else name)),
        (3, log_directory),
        (6, labels or {'app': name}),
        (7, annotations or {}),
        (8, linux),
    )


def container_config(name, image, command=None, args=None, envs=None, mounts=None, privileged=False,
                     labels=None, log_path=None, working_dir=None):
    """A ContainerConfig. mounts: [(host_path, container_path, readonly)]; envs: {name: value}."""
    mount_msgs = [Msg((1, c), (2, h), (3, bool(ro))) for h, c, ro in (mounts or [])]
    env_msgs = [Msg((1, k), (2, v)) for k, v in (envs or {}).items()]
    security = Msg((2, privileged), (3, Msg((1, POD), (2, CONTAINER), (3, POD))))
    return Msg(
        (1, Msg((1, name), (2, 0))),
        (2, Msg((1, image))),
        (3, list(command) if command else None),
        (4, list(args) if args else None),
        (5, working_dir),
        (6, env_msgs or None),
        (7, mount_msgs or None),
        (9, labels or {}),
        (11, log_path),
        (15, Msg((2, security))),
    )


# --- the client --------------------------------------------------------------------------------------------------


def _identity(data):
    return data


class Client:
    def __init__(self, socket_path, timeout=60):
        if grpc is None:
            raise RuntimeError('cri: the grpcio package is missing (bash Tests/Runtime/pydeps.sh prints a PYTHONPATH)')
        self.socket_path = socket_path
        self.timeout = timeout
        self.channel = grpc.insecure_channel('unix://' + socket_path,
                                             options=[('grpc.max_receive_message_length', 64 << 20)])

    def close(self):
        self.channel.close()

    def call(self, method, request, timeout=None):
        """One unary call; returns the decoded response fields."""
        stub = self.channel.unary_unary(RUNTIME + method, request_serializer=_identity,
                                        response_deserializer=_identity)
        data = request.data if isinstance(request, Msg) else request
        return dec(stub(data, timeout=timeout or self.timeout))

    def wait_ready(self, seconds=30):
        """Waits until the socket answers Version."""
        import time
        deadline = time.monotonic() + seconds
        while True:
            try:
                return self.version()
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def version(self):
        f = self.call('Version', Msg((1, 'v1')), timeout=5)
        return {'version': _str(f, 1), 'runtime_name': _str(f, 2), 'runtime_version': _str(f, 3),
                'runtime_api_version': _str(f, 4)}

    def run_pod_sandbox(self, config, runtime_handler=''):
        return _str(self.call('RunPodSandbox', Msg((1, config), (2, runtime_handler))), 1)

    def pod_sandbox_status(self, sandbox_id, verbose=False):
        f = self.call('PodSandboxStatus', Msg((1, sandbox_id), (2, verbose)))
        st = dec(f[1][0]) if 1 in f else {}
        meta = dec(st[2][0]) if 2 in st else {}
        net = dec(st[5][0]) if 5 in st else {}
        return {'id': _str(st, 1), 'name': _str(meta, 1), 'uid': _str(meta, 2), 'namespace': _str(meta, 3),
                'state': SANDBOX_STATES.get(_int(st, 3), '?'), 'created_at': _int(st, 4),
                'ip': _str(net, 1), 'additional_ips': [_str(dec(p), 1) for p in net.get(2, [])],
                'labels': _map(st, 7), 'info': _map(f, 2)}

    def stop_pod_sandbox(self, sandbox_id):
        self.call('StopPodSandbox', Msg((1, sandbox_id)))

    def remove_pod_sandbox(self, sandbox_id):
        self.call('RemovePodSandbox', Msg((1, sandbox_id)))

    def list_pod_sandbox(self, state=None, labels=None):
        """All sandboxes (optionally only 'READY'/'NOTREADY' ones, or matching labels)."""
        filt = None
        if state is not None or labels:
            state_value = Msg((1, {'READY': 0, 'NOTREADY': 1}[state])) if state is not None else None
            filt = Msg((2, state_value), (3, labels or {}))
        f = self.call('ListPodSandbox', Msg((1, filt)))
        out = []
        for item in f.get(1, []):
            s = dec(item)
            meta = dec(s[2][0]) if 2 in s else {}
            out.append({'id': _str(s, 1), 'name': _str(meta, 1), 'uid': _str(meta, 2), 'namespace': _str(meta, 3),
                        'state': SANDBOX_STATES.get(_int(s, 3), '?'), 'labels': _map(s, 5)})
        return out

    def create_container(self, sandbox_id, config, sandbox_config):
        return _str(self.call('CreateContainer', Msg((1, sandbox_id), (2, config), (3, sandbox_config))), 1)

    def start_container(self, container_id):
        self.call('StartContainer', Msg((1, container_id)))

    def container_status(self, container_id):
        f = self.call('ContainerStatus', Msg((1, container_id)))
        st = dec(f[1][0]) if 1 in f else {}
        return {'id': _str(st, 1), 'state': CONTAINER_STATES.get(_int(st, 3), '?'), 'exit_code': _int(st, 7),
                'reason': _str(st, 10), 'message': _str(st, 11), 'log_path': _str(st, 15)}

    def exec_sync(self, container_id, cmd, timeout=10):
        f = self.call('ExecSync', Msg((1, container_id), (2, list(cmd)), (3, timeout)), timeout=timeout + 30)
        return {'stdout': f.get(1, [b''])[-1], 'stderr': f.get(2, [b''])[-1], 'exit_code': _int(f, 3)}

    def stop_container(self, container_id, timeout=0):
        self.call('StopContainer', Msg((1, container_id), (2, timeout)))

    def remove_container(self, container_id):
        self.call('RemoveContainer', Msg((1, container_id)))
