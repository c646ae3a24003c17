// A minimal cnitool: drives a network configuration list through the CNI project's own library
// (libcni), as cnitool does, for tests/cni.rs. Built offline in GOPATH mode against Debian's
// golang-github-appc-cni-dev (libcni 1.1.2, which speaks CNI up to 1.0.0):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o cnitool tests/cni/cnitool/main.go
//
// Usage: cnitool add|check|del CONFLIST CONTAINER-ID NETNS, with CNI_PATH (where the plugins
// are), CNI_CACHE_DIR (libcni's result cache) and CAP_ARGS (the capability arguments, JSON:
// {"portMappings": [...]}) in the environment. add prints the chain's result.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containernetworking/cni/libcni"
)

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "cnitool: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	if len(os.Args) != 5 {
		fail("usage: cnitool add|check|del CONFLIST CONTAINER-ID NETNS")
	}
	list, err := libcni.ConfListFromFile(os.Args[2])
	if err != nil {
		fail("%v", err)
	}
	capArgs := map[string]interface{}{}
	if text := os.Getenv("CAP_ARGS"); text != "" {
		if err := json.Unmarshal([]byte(text), &capArgs); err != nil {
			fail("CAP_ARGS: %v", err)
		}
	}
	rt := &libcni.RuntimeConf{
		ContainerID:    os.Args[3],
		NetNS:          os.Args[4],
		IfName:         "eth0",
		CapabilityArgs: capArgs,
	}
	cni := libcni.NewCNIConfigWithCacheDir(filepath.SplitList(os.Getenv("CNI_PATH")), os.Getenv("CNI_CACHE_DIR"), nil)
	ctx := context.Background()
	switch os.Args[1] {
	case "add":
		result, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			fail("add: %v", err)
		}
		if err := result.Print(); err != nil {
			fail("%v", err)
		}
	case "check":
		if err := cni.CheckNetworkList(ctx, list, rt); err != nil {
			fail("check: %v", err)
		}
	case "del":
		if err := cni.DelNetworkList(ctx, list, rt); err != nil {
			fail("del: %v", err)
		}
	default:
		fail("unknown operation %q", os.Args[1])
	}
}
