#!/bin/bash
# Instructions the plugin executes per invocation (callgrind's "Collected"), for start-up budgets: VERSION, and a pod's
# ADD and DEL on nftables with the node-wide rules already written (the common case on a node). Root, valgrind.
#   bash Tests/Bench/instructions.sh .build/release/ip-masq
set -euo pipefail
plugin=$(realpath "$1")
ns=ipminstr$$
work=$(mktemp -d /tmp/ipmasq-instr-XXXXXX)
ip netns add "$ns"
trap 'ip netns del "$ns"; rm -rf "$work"' EXIT
conf() {
  printf '{"cniVersion":"1.0.0","name":"instr","type":"ip-masq","backend":"nftables","conntrackFlush":false,"lockFile":"%s/lock","stateDir":"%s/state",%s"prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/var/run/netns/x"}],"ips":[{"interface":0,"address":"%s/24"}]}}' \
    "$work" "$work" "${2:-}" "$1"
}
run() { # verb container ip [valgrind]
  local verb=$1 cid=$2 ip=$3
  shift 3
  conf "$ip" | ip netns exec "$ns" env -i CNI_COMMAND="$verb" CNI_CONTAINERID="$cid" CNI_IFNAME=eth0 \
    CNI_NETNS=/var/run/netns/x CNI_PATH=/opt/cni/bin PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@" "$plugin" >/dev/null
}
count() { # label verb container ip
  local label=$1
  shift
  local n
  n=$(run "$@" valgrind --tool=callgrind --callgrind-out-file=/dev/null 2>&1 >/dev/null | sed -n 's/.*Collected : *\([0-9]*\).*/\1/p')
  echo "$label $n"
}
run ADD a 10.9.0.2          # first pod: writes the node-wide rules
count VERSION VERSION v 10.9.0.9
count ADD ADD b 10.9.0.3
count DEL DEL b 10.9.0.3
