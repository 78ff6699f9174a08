#!/usr/bin/env python3
"""Writes a reproducible OCI image archive from a root filesystem directory (Python standard library only).

    oci-layout.py ROOTFS OUT.tar --name localhost/ip-masq:0.1.0 --name localhost/ip-masq:latest \
                  [--entrypoint /ip-masq] [--cmd version] [--env PATH=...] [--label k=v] [--epoch N]

The archive is an OCI image layout (oci-layout, index.json, blobs/sha256/...) in one tar, as
`ctr images import` reads it: one gzip layer, its config and manifest, and one index entry per name carrying
both `io.containerd.image.name` and `org.opencontainers.image.ref.name`. A docker-archive manifest.json over the
same blobs names the image for `podman load` (which refuses an OCI index of more than one entry).

Reproducible: entries sorted by path, owner 0:0 without names, every mtime the epoch (SOURCE_DATE_EPOCH),
no gzip name or timestamp, JSON with sorted keys. The same ROOTFS bytes give the same digests.
Prints one JSON line: manifest digest, layer sizes (uncompressed and gzip), archive path.
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import stat
import sys
import tarfile
import time


def tar_info(name, mode, epoch, kind=tarfile.REGTYPE, size=0, linkname=""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.linkname = linkname
    info.mtime = epoch
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def layer_tar(rootfs, epoch):
    """The rootfs as an uncompressed tar (bytes): sorted, fixed owner and time, modes as on disk."""
    paths = []
    for directory, dirnames, filenames in os.walk(rootfs):
        dirnames.sort()
        for name in dirnames + filenames:
            paths.append(os.path.relpath(os.path.join(directory, name), rootfs))
    paths.sort()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for relative in paths:
            full = os.path.join(rootfs, relative)
            st = os.lstat(full)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                tar.addfile(tar_info(relative + "/", mode, epoch, tarfile.DIRTYPE))
            elif stat.S_ISLNK(st.st_mode):
                tar.addfile(tar_info(relative, 0o777, epoch, tarfile.SYMTYPE, linkname=os.readlink(full)))
            elif stat.S_ISREG(st.st_mode):
                with open(full, "rb") as handle:
                    tar.addfile(tar_info(relative, mode, epoch, size=st.st_size), handle)
            else:
                sys.exit(f"oci-layout: {full}: only directories, regular files and symlinks belong in the image")
    return buffer.getvalue()


def canonical(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rootfs")
    parser.add_argument("output")
    parser.add_argument("--name", action="append", required=True, help="full image name (repeatable)")
    parser.add_argument("--entrypoint", action="append", default=[])
    parser.add_argument("--cmd", action="append", default=[])
    parser.add_argument("--env", action="append", default=[])
    parser.add_argument("--label", action="append", default=[])
    parser.add_argument("--epoch", type=int, default=int(os.environ.get("SOURCE_DATE_EPOCH", "0")))
    args = parser.parse_args()
    epoch = args.epoch
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))

    layer = layer_tar(args.rootfs, epoch)
    compressed = gzip.compress(layer, compresslevel=9, mtime=0)  # no name, no timestamp in the header
    labels = dict(item.split("=", 1) for item in args.label)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": {"Entrypoint": args.entrypoint, "Cmd": args.cmd, "Env": args.env, "Labels": labels,
                   "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [sha256(layer)]},
        "history": [{"created": created, "created_by": ".ci/image (Debian packages + ip-masq release binary)"}],
    }
    config_bytes = canonical(config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256(config_bytes), "size": len(config_bytes)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": sha256(compressed), "size": len(compressed)}],
        "annotations": {"org.opencontainers.image.created": created},
    }
    manifest_bytes = canonical(manifest)
    manifest_digest = sha256(manifest_bytes)
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": manifest["mediaType"], "digest": manifest_digest, "size": len(manifest_bytes),
                       "platform": {"architecture": "amd64", "os": "linux"},
                       "annotations": {"io.containerd.image.name": name,
                                       "org.opencontainers.image.ref.name": name}}
                      for name in args.name],
    }
    files = {
        "oci-layout": canonical({"imageLayoutVersion": "1.0.0"}),
        "index.json": canonical(index),
    }
    # The same image as a docker-archive manifest too (as `docker save` writes both): podman load reads an OCI
    # archive's index only when it holds one entry, a docker-archive's RepoTags give it every name.
    files["manifest.json"] = canonical([{"Config": "blobs/sha256/" + sha256(config_bytes)[7:],
                                         "RepoTags": args.name,
                                         "Layers": ["blobs/sha256/" + sha256(compressed)[7:]]}])
    for blob in (compressed, config_bytes, manifest_bytes):
        files["blobs/sha256/" + sha256(blob)[7:]] = blob

    temporary = args.output + ".tmp"
    with tarfile.open(temporary, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("blobs/", "blobs/sha256/"):
            tar.addfile(tar_info(directory, 0o755, epoch, tarfile.DIRTYPE))
        for name in sorted(files):
            data = files[name]
            tar.addfile(tar_info(name, 0o644, epoch, size=len(data)), io.BytesIO(data))
    os.replace(temporary, args.output)
    with open(args.output, "rb") as handle:
        archive_digest = sha256(handle.read())
    print(json.dumps({"manifest": manifest_digest, "config": sha256(config_bytes), "layer": sha256(compressed),
                      "uncompressed": len(layer), "compressed": len(compressed), "archive": args.output,
                      "archiveDigest": archive_digest, "names": args.name}))


if __name__ == "__main__":
    main()
