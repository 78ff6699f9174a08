// Command cnitool is the test harness for ip-masq: a cnitool-style driver
// built on Debian's libcni 1.1.2 (golang-github-appc-cni-dev).
//
// Build (offline, GOPATH mode; no go.mod needed, the package builds in place):
//
//	GO111MODULE=off GOPATH=$(mktemp -d):/usr/share/gocode go build -o cnitool ./Tests/cnitool
//
// (`go build -o cnitool Tests/cnitool/*.go` with the same env works too.)
//
// Usage:
//
//	cnitool [-cache-dir DIR] [-ifname IF] add|check|del <network-name> <netns-path>
//
// Environment, as upstream cnitool: NETCONFPATH (default /etc/cni/net.d),
// CNI_PATH (colon-separated), CNI_ARGS ("K=V;K2=V2"), CAP_ARGS (JSON object,
// becomes RuntimeConf.CapabilityArgs), CNI_IFNAME (default eth0; -ifname wins).
// Additions for tests:
//   - CNI_CACHE_DIR: alternative to -cache-dir (the flag wins). A cache dir is
//     required so the harness never writes to the machine's /var/lib/cni.
//   - CNI_CONTAINERID: overrides the container ID, which otherwise is the
//     upstream "cnitool-" + hex(sha512(abs(netns))[:10]).
//
// add prints the final result as indented JSON on stdout. Errors go to
// stderr with exit status 1.
package main

import (
	"context"
	"crypto/sha512"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/libcni"
)

func main() {
	cacheDir := flag.String("cache-dir", os.Getenv("CNI_CACHE_DIR"), "libcni cache directory (or env CNI_CACHE_DIR); required")
	ifName := flag.String("ifname", envOr("CNI_IFNAME", "eth0"), "interface name in the container (or env CNI_IFNAME)")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: %s [-cache-dir DIR] [-ifname IF] add|check|del <network-name> <netns-path>\n", filepath.Base(os.Args[0]))
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 3 {
		flag.Usage()
		os.Exit(1)
	}
	if *cacheDir == "" {
		fail(fmt.Errorf("a cache dir is required: pass -cache-dir or set CNI_CACHE_DIR"))
	}
	if err := run(flag.Arg(0), flag.Arg(1), flag.Arg(2), *cacheDir, *ifName); err != nil {
		fail(err)
	}
}

func run(verb, netName, netns, cacheDir, ifName string) error {
	if verb != "add" && verb != "check" && verb != "del" {
		return fmt.Errorf("unknown command %q (want add, check or del)", verb)
	}

	// In libcni 1.1.2 LoadConfList already falls back to a single-plugin
	// *.conf/*.json (LoadConf + ConfListFromConf), exactly as cnitool does.
	list, err := libcni.LoadConfList(envOr("NETCONFPATH", "/etc/cni/net.d"), netName)
	if err != nil {
		return err
	}

	rt := &libcni.RuntimeConf{IfName: ifName}
	if rt.NetNS, err = filepath.Abs(netns); err != nil {
		return err
	}
	rt.ContainerID = os.Getenv("CNI_CONTAINERID")
	if rt.ContainerID == "" {
		sum := sha512.Sum512([]byte(rt.NetNS))
		rt.ContainerID = fmt.Sprintf("cnitool-%x", sum[:10])
	}
	if s := os.Getenv("CNI_ARGS"); s != "" {
		if rt.Args, err = parseArgs(s); err != nil {
			return err
		}
	}
	if s := os.Getenv("CAP_ARGS"); s != "" {
		if err := json.Unmarshal([]byte(s), &rt.CapabilityArgs); err != nil {
			return fmt.Errorf("CAP_ARGS: %w", err)
		}
	}

	cni := libcni.NewCNIConfigWithCacheDir(filepath.SplitList(os.Getenv("CNI_PATH")), cacheDir, nil)
	ctx := context.Background()
	switch verb {
	case "add":
		result, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			return err
		}
		if err := result.Print(); err != nil {
			return err
		}
		fmt.Println() // libcni's Print ends without a newline
		return nil
	case "check":
		return cni.CheckNetworkList(ctx, list, rt)
	default:
		return cni.DelNetworkList(ctx, list, rt)
	}
}

// parseArgs splits "K=V;K2=V2" with upstream cnitool's strictness.
func parseArgs(s string) ([][2]string, error) {
	var out [][2]string
	for _, pair := range strings.Split(s, ";") {
		kv := strings.Split(pair, "=")
		if len(kv) != 2 || kv[0] == "" || kv[1] == "" {
			return nil, fmt.Errorf("invalid CNI_ARGS pair %q", pair)
		}
		out = append(out, [2]string{kv[0], kv[1]})
	}
	return out, nil
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "cnitool:", err)
	os.Exit(1)
}
