#!/bin/bash
# Instructions (callgrind "Collected") of one pod's ADD and DEL with N other pods registered, for issue 15's cost
# target: within 10% of the plugin without the egress keys and flat in N. Root, valgrind, nftables or iptables.
#   bash Tests/Bench/policy-instructions.sh BINARY N BACKEND [EXTRA_KEYS_JSON_FRAGMENT] [CNI_ARGS]
# e.g. bash Tests/Bench/policy-instructions.sh .build/release/ip-masq 1000 nftables '"snatAddress":"203.0.113.9","egressInterfaces":["eth0"],' 'K8S_POD_NAMESPACE=payments;K8S_POD_NAME=api-1'
# NAMESPACES=K (issue 15 item 1): the config gets K namespace policies ns0..ns{K-1} (each its own snatAddress), the
# N pods are spread over them (pod i in ns{i mod K}); CNI_ARGS then names the measured pod's namespace (ns0: a slot).
set -euo pipefail
plugin=$(realpath "$1"); n=$2; backend=$3; extra=${4:-}; args=${5:-}
namespaces=${NAMESPACES:-0}
if [ "$namespaces" -gt 0 ]; then
  map=""
  for k in $(seq 0 $((namespaces - 1))); do map="$map${map:+,}\"ns$k\":{\"snatAddress\":\"203.0.113.$((k + 10))\"}"; done
  extra="$extra\"namespaces\":{$map},"
fi
ns=ipmpolicy$$
work=$(mktemp -d /tmp/ipmasq-policy-XXXXXX)
ip netns add "$ns"
trap 'ip netns del "$ns"; rm -rf "$work"' EXIT
conf() {
  printf '{"cniVersion":"1.0.0","name":"instr","type":"ip-masq","backend":"%s","conntrackFlush":false,"lockFile":"%s/lock","stateDir":"%s/state",%s"prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/var/run/netns/x"}],"ips":[{"interface":0,"address":"%s/16"}]}}' \
    "$backend" "$work" "$work" "$extra" "$1"
}
run() { # verb container ip [valgrind...]
  local verb=$1 cid=$2 ip=$3
  shift 3
  conf "$ip" | ip netns exec "$ns" env -i CNI_COMMAND="$verb" CNI_CONTAINERID="$cid" CNI_IFNAME=eth0 CNI_ARGS="${podargs:-$args}" \
    CNI_NETNS=/var/run/netns/x CNI_PATH=/opt/cni/bin PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@" "$plugin" >/dev/null
}
count() { # verb container ip
  run "$@" valgrind --tool=callgrind --callgrind-out-file=/dev/null 2>&1 >/dev/null | sed -n 's/.*Collected : *\([0-9]*\).*/\1/p'
}
run ADD first 10.9.0.2 2>/dev/null # writes the node-wide rules
for i in $(seq 1 "$n"); do
  podargs=""
  if [ "$namespaces" -gt 0 ]; then podargs="K8S_POD_NAMESPACE=ns$((i % namespaces));K8S_POD_NAME=p$i"; fi
  podargs=$podargs run ADD "p$i" "10.9.$((i / 250 + 1)).$((i % 250 + 2))" 2>/dev/null
done
podargs=""
echo "N=$n backend=$backend namespaces=$namespaces ADD $(count ADD probe 10.9.200.3) DEL $(count DEL probe 10.9.200.3)"
