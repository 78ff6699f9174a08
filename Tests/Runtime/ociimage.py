"""A busybox image written offline: an OCI image layout archive (for `ctr images import`) and a plain rootfs tar
(for `podman import`), both from Debian's busybox-static (/bin/busybox).

    from ociimage import write_oci_archive, write_rootfs_tar
    write_oci_archive('/tmp/x/bb.oci.tar', 'localhost/bb:1')   # ctr --address SOCK -n k8s.io images import FILE
    write_rootfs_tar('/tmp/x/rootfs.tar')                      # podman import FILE localhost/bb:1

The image holds /bin/busybox, one symlink per applet in /bin, /etc/passwd and /etc/group, and has
`/bin/sleep 100000` as its command, so it serves as the sandbox ("pause") image and as the workload image.
Everything is deterministic (fixed mtimes, sorted entries), so the same input gives the same digests.
"""
import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile

BUSYBOX = '/bin/busybox'
COMMAND = ['/bin/sleep', '100000']


def _applets(busybox):
    out = subprocess.run([busybox, '--list'], check=True, capture_output=True, text=True).stdout
    return sorted(a for a in out.split() if a and '/' not in a and a != 'busybox')


def _add(tar, name, data=None, mode=0o644, kind=tarfile.REGTYPE, link=''):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime, info.uid, info.gid = kind, mode, 0, 0, 0
    info.uname = info.gname = 'root'
    if kind == tarfile.SYMTYPE:
        info.linkname = link
    if data is not None:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    else:
        tar.addfile(info)


def rootfs_bytes(busybox=BUSYBOX, extra_files=None):
    """The root file system as an uncompressed tar. `extra_files` maps a path (no leading /) to (bytes, mode)."""
    with open(busybox, 'rb') as f:
        binary = f.read()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w', format=tarfile.GNU_FORMAT) as tar:
        for d in ['bin', 'dev', 'etc', 'proc', 'sys', 'tmp', 'root', 'var', 'run']:
            _add(tar, d, kind=tarfile.DIRTYPE, mode=0o1777 if d == 'tmp' else 0o755)
        _add(tar, 'bin/busybox', binary, mode=0o755)
        for applet in _applets(busybox):
            _add(tar, 'bin/' + applet, kind=tarfile.SYMTYPE, link='busybox', mode=0o777)
        _add(tar, 'etc/passwd', b'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n')
        _add(tar, 'etc/group', b'root:x:0:\nnogroup:x:65534:\n')
        for path, (data, mode) in sorted((extra_files or {}).items()):
            parts = path.split('/')
            for i in range(1, len(parts)):
                d = '/'.join(parts[:i])
                if d not in ('bin', 'etc', 'tmp', 'var', 'run', 'root'):
                    _add(tar, d, kind=tarfile.DIRTYPE, mode=0o755)
            _add(tar, path, data, mode=mode)
    return buf.getvalue()


def write_rootfs_tar(path, busybox=BUSYBOX, extra_files=None):
    with open(path, 'wb') as f:
        f.write(rootfs_bytes(busybox, extra_files))


def _digest(data):
    return 'sha256:' + hashlib.sha256(data).hexdigest()


def write_oci_archive(path, ref='localhost/bb:1', busybox=BUSYBOX, command=None, extra_files=None):
    """Writes an OCI image layout tar holding one image named `ref`; returns the manifest digest."""
    layer = rootfs_bytes(busybox, extra_files)
    layer_gz = gzip.compress(layer, mtime=0)
    config = json.dumps({
        'architecture': 'amd64', 'os': 'linux',
        'config': {'Cmd': command or COMMAND, 'Env': ['PATH=/bin'], 'WorkingDir': '/'},
        'rootfs': {'type': 'layers', 'diff_ids': [_digest(layer)]},
        'history': [{'created_by': 'Tests/Runtime/ociimage.py'}],
    }, sort_keys=True).encode()
    manifest = json.dumps({
        'schemaVersion': 2,
        'mediaType': 'application/vnd.oci.image.manifest.v1+json',
        'config': {'mediaType': 'application/vnd.oci.image.config.v1+json', 'digest': _digest(config),
                   'size': len(config)},
        'layers': [{'mediaType': 'application/vnd.oci.image.layer.v1.tar+gzip', 'digest': _digest(layer_gz),
                    'size': len(layer_gz)}],
    }, sort_keys=True).encode()
    tag = ref.rsplit(':', 1)[1] if ':' in ref.rsplit('/', 1)[-1] else 'latest'
    index = json.dumps({
        'schemaVersion': 2,
        'manifests': [{'mediaType': 'application/vnd.oci.image.manifest.v1+json', 'digest': _digest(manifest),
                       'size': len(manifest), 'platform': {'architecture': 'amd64', 'os': 'linux'},
                       'annotations': {'io.containerd.image.name': ref,
                                       'org.opencontainers.image.ref.name': tag}}],
    }, sort_keys=True).encode()
    with tarfile.open(path, mode='w', format=tarfile.GNU_FORMAT) as tar:
        _add(tar, 'oci-layout', json.dumps({'imageLayoutVersion': '1.0.0'}).encode())
        _add(tar, 'index.json', index)
        _add(tar, 'blobs', kind=tarfile.DIRTYPE, mode=0o755)
        _add(tar, 'blobs/sha256', kind=tarfile.DIRTYPE, mode=0o755)
        for blob in (layer_gz, config, manifest):
            _add(tar, 'blobs/sha256/' + _digest(blob)[7:], blob)
    return _digest(manifest)


if __name__ == '__main__':
    import sys
    write_oci_archive(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else 'localhost/bb:1')
