package broker

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// StoreFile is the store block: where the broker keeps its state. Without
// one the broker uses the embedded bbolt file data_dir/store.db, which one
// broker process owns; with "etcd", every broker replica sharing the etcd
// cluster and prefix shares the state.
//
//	store "bolt" {}                       # the default
//	store "etcd" {
//	  endpoints    = ["https://etcd-1.example.com:2379", …]
//	  ca_cert      = "etcd-ca.pem"         # verifies the servers; https endpoints need it
//	  cert         = "etcd-client.pem"     # client certificate and key, when etcd asks for one
//	  key          = "etcd-client-key.pem"
//	  prefix       = "/keybroker/"         # default; every key the broker writes is under it
//	  dial_timeout = "5s"                  # default
//	}
type StoreFile struct {
	Kind        string   `hcl:"kind,label"`
	Endpoints   []string `hcl:"endpoints,optional"`
	CACert      string   `hcl:"ca_cert,optional"`
	Cert        string   `hcl:"cert,optional"`
	Key         string   `hcl:"key,optional"`
	Prefix      string   `hcl:"prefix,optional"`
	DialTimeout string   `hcl:"dial_timeout,optional"`
}

// Store kinds.
const (
	StoreBolt = "bolt"
	StoreEtcd = "etcd"
)

// Defaults of the etcd store.
const (
	DefaultEtcdPrefix      = "/keybroker/"
	DefaultEtcdDialTimeout = 5 * time.Second
)

// StoreConfig is the parsed store block.
type StoreConfig struct {
	// Kind is StoreBolt or StoreEtcd.
	Kind string
	// For StoreEtcd: endpoints (URLs), TLS files (absolute), key prefix
	// and dial timeout.
	Endpoints         []string
	CACert, Cert, Key string
	Prefix            string
	DialTimeout       time.Duration
}

// buildStore validates the store blocks (at most one).
func (fc *FileConfig) buildStore(abs func(string) string, at spot, p *problems) StoreConfig {
	sc := StoreConfig{Kind: StoreBolt}
	blocks := at.blocks("store")
	for i := 1; i < len(blocks); i++ {
		p.at(blocks[i].def, "only one store block is allowed")
	}
	if len(fc.Store) == 0 {
		return sc
	}
	sf, in := fc.Store[0], at.block("store", 0)
	switch sf.Kind {
	case StoreBolt:
		for _, name := range []string{"endpoints", "ca_cert", "cert", "key", "prefix", "dial_timeout"} {
			if in.has(name) {
				p.at(in.attr(name), "store \"bolt\": %s is an etcd setting; the bolt store is data_dir/store.db", name)
			}
		}
		return sc
	case StoreEtcd:
	default:
		p.at(in.label, "store %q: the store is \"bolt\" (the default) or \"etcd\"", sf.Kind)
		return sc
	}
	sc = StoreConfig{Kind: StoreEtcd, Prefix: DefaultEtcdPrefix, DialTimeout: DefaultEtcdDialTimeout}
	sc.Endpoints = sf.buildEndpoints(in, p)
	if in.has("prefix") {
		switch {
		case !strings.HasPrefix(sf.Prefix, "/") || !strings.HasSuffix(sf.Prefix, "/") || len(sf.Prefix) < 2:
			p.at(in.attr("prefix"), "store \"etcd\": prefix %q must start and end with \"/\", such as %q", sf.Prefix, DefaultEtcdPrefix)
		default:
			sc.Prefix = sf.Prefix
		}
	}
	if d, ok := parseDuration(sf.DialTimeout, "dial_timeout", in, p); ok {
		if d <= 0 || d > time.Minute {
			p.at(in.attr("dial_timeout"), "store \"etcd\": dial_timeout must be between 1ms and 1m")
		} else {
			sc.DialTimeout = d
		}
	}
	sc.CACert, sc.Cert, sc.Key = abs(sf.CACert), abs(sf.Cert), abs(sf.Key)
	for _, f := range []struct{ name, path string }{{"ca_cert", sc.CACert}, {"cert", sc.Cert}, {"key", sc.Key}} {
		if f.path != "" {
			readable(p, in.attr(f.name), "store \"etcd\": ", f.name, f.path, f.path)
		}
	}
	if (sc.Cert == "") != (sc.Key == "") {
		p.at(in.def, "store \"etcd\": cert and key go together")
	}
	return sc
}

// buildEndpoints checks the etcd endpoints: URLs with a host and port, all
// http or all https (https needs ca_cert unless the system's roots verify
// the servers; plain http is only for loopback).
func (sf *StoreFile) buildEndpoints(in spot, p *problems) []string {
	if len(sf.Endpoints) == 0 {
		p.at(in.def, "store \"etcd\": endpoints cannot be empty")
		return nil
	}
	var out []string
	for i, e := range sf.Endpoints {
		u, err := url.Parse(e)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" || u.Port() == "" || (u.Path != "" && u.Path != "/") {
			p.at(in.entry("endpoints", i), "store \"etcd\": endpoint %q is not a URL such as \"https://etcd-1.example.com:2379\"", e)
			continue
		}
		if _, err := strconv.Atoi(u.Port()); err != nil {
			p.at(in.entry("endpoints", i), "store \"etcd\": endpoint %q has no port number", e)
			continue
		}
		if u.Scheme == "http" && !isLoopback(u.Hostname()) {
			p.at(in.entry("endpoints", i), "store \"etcd\": endpoint %q: plain http is allowed on loopback only; use https", e)
			continue
		}
		out = append(out, e)
	}
	return out
}

func isLoopback(host string) bool {
	return host == "localhost" || strings.HasPrefix(host, "127.") || host == "::1"
}

// String describes where the store is, for logs.
func (sc StoreConfig) String() string {
	if sc.Kind == StoreEtcd {
		return fmt.Sprintf("etcd %s prefix %s", strings.Join(sc.Endpoints, ","), sc.Prefix)
	}
	return "bolt"
}
