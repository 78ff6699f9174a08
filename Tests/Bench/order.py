#!/usr/bin/env python3
"""Writes the plugin's hot-function list for the linker (Sources/ip-masq/Link/hot-functions.txt).

The release link places the listed functions' sections together (gold's --section-ordering-file, see Package.swift),
so that the code a CNI invocation runs sits on few pages: fewer page faults at every start and a smaller resident set
(measured: VERSION 190 -> 180 faults, peak RSS of a pod ADD 6.5 -> 5.7 MB). The list is the functions of the binary
that callgrind sees run in the plugin's common invocations, in a throwaway network namespace: VERSION, ADD (first pod,
then another), CHECK, DEL (twice), bad input, for both backends.

A stale list is harmless (names the link does not find are ignored, new functions are simply not grouped); regenerate
it after large changes:

    swift build -c release --static-swift-stdlib
    sudo python3 Tests/Bench/order.py --plugin .build/release/ip-masq > Sources/ip-masq/Link/hot-functions.txt

Needs root and valgrind. Python 3 standard library only.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile


def netconf(work, ip, backend):
    conf = {"cniVersion": "1.0.0", "name": "order", "type": "ip-masq", "lockFile": work + "/lock", "stateDir": work + "/state",
            "prevResult": {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/x"}],
                           "ips": [{"interface": 0, "address": ip + "/24"}]}}
    conf.update(backend)
    return json.dumps(conf).encode()


def functions(profile, binary):
    """Functions of `binary` with cost in a callgrind profile, in the order the profile names them."""
    objects, names, found = {}, {}, []
    current = None
    for line in open(profile, errors="replace"):
        line = line.rstrip("\n")
        match = re.match(r"^c(ob|fn)=\((\d+)\)(?: (.*))?$", line)
        if match:
            if match.group(3):
                (objects if match.group(1) == "ob" else names)[match.group(2)] = match.group(3)
            continue
        match = re.match(r"^ob=\((\d+)\)(?: (.*))?$", line)
        if match:
            if match.group(2):
                objects[match.group(1)] = match.group(2)
            current = objects.get(match.group(1))
            continue
        match = re.match(r"^fn=\((\d+)\)(?: (.*))?$", line)
        if match:
            if match.group(2):
                names[match.group(1)] = match.group(2)
            name = names.get(match.group(1))
            if current and os.path.realpath(current) == binary and name and not name.startswith("0x"):
                found.append(name)
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plugin", required=True)
    args = parser.parse_args()
    binary = os.path.realpath(args.plugin)
    if os.geteuid() != 0 or not shutil.which("valgrind"):
        sys.exit("order.py: needs root and valgrind")
    namespace = "ipmorder%d" % os.getpid()
    work = tempfile.mkdtemp(prefix="ipmasq-order-")
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    ordered, seen = [], set()
    try:
        calls = [("VERSION", "v", "10.9.0.2", {}, False)]
        for backend in ({"backend": "nftables"}, {"backend": "iptables", "iptablesMode": "nft"}):
            calls += [("ADD", "a", "10.9.0.2", backend, True), ("ADD", "b", "10.9.0.3", backend, True),
                      ("CHECK", "b", "10.9.0.3", backend, True), ("DEL", "b", "10.9.0.3", backend, True),
                      ("DEL", "b", "10.9.0.3", backend, True), ("ADD", "c", "10.9.0.4", backend, False)]
        for index, (verb, cid, ip, backend, valid) in enumerate(calls):
            profile = "%s/callgrind.%d" % (work, index)
            env = {"CNI_COMMAND": verb, "CNI_CONTAINERID": cid, "CNI_IFNAME": "eth0", "CNI_NETNS": "/var/run/netns/x",
                   "CNI_PATH": "/opt/cni/bin", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
            stdin = netconf(work + "/" + str(len(backend)), ip, backend) if valid else b"{not json"
            subprocess.run(["ip", "netns", "exec", namespace, "env", "-i"] + ["%s=%s" % item for item in env.items()]
                           + ["valgrind", "--tool=callgrind", "--demangle=no", "--callgrind-out-file=" + profile, binary],
                           input=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for name in functions(profile, binary):
                if name not in seen:
                    seen.add(name)
                    ordered.append(name)
    finally:
        subprocess.run(["ip", "netns", "del", namespace])
        shutil.rmtree(work, ignore_errors=True)
    if len(ordered) < 100:
        sys.exit("order.py: only %d functions seen; is valgrind working?" % len(ordered))
    for name in ordered:
        print(".text." + name)


if __name__ == "__main__":
    main()
