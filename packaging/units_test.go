package packaging

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// unit is a parsed systemd unit file: per section, each key's assignments
// in file order.
type unit map[string]map[string][]string

// readUnit parses a unit file strictly enough for these tests: sections,
// key=value lines and comments; a continued line is an error.
func readUnit(t *testing.T, path string) unit {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("unable to open unit: %v", err)
	}
	defer f.Close()
	u := unit{}
	section := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case strings.HasSuffix(line, `\`):
			t.Fatalf("%s:%d: continued lines are not supported here", path, n)
		case line[0] == '[' && line[len(line)-1] == ']':
			section = line[1 : len(line)-1]
			u[section] = map[string][]string{}
		default:
			key, value, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s:%d: not a key=value line in a section: %q", path, n, line)
			}
			key = strings.TrimSpace(key)
			u[section][key] = append(u[section][key], strings.TrimSpace(value))
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("unable to read unit: %v", err)
	}
	return u
}

// service returns the [Service] value of key, requiring that it is set
// exactly once.
func (u unit) service(t *testing.T, key string) string {
	t.Helper()
	vs := u["Service"][key]
	if len(vs) != 1 {
		t.Fatalf("%s= is set %d times, want once: %q", key, len(vs), vs)
	}
	return vs[0]
}

// hardening is what both units must keep: a directive removed or weakened
// fails here even where the exposure score would not notice (DynamicUser
// implies ProtectSystem=strict, for instance).
var hardening = map[string]string{
	"NoNewPrivileges":         "yes",
	"CapabilityBoundingSet":   "",
	"AmbientCapabilities":     "",
	"ProtectSystem":           "strict",
	"ProtectHome":             "yes",
	"PrivateMounts":           "yes",
	"PrivateTmp":              "yes",
	"ProtectHostname":         "yes",
	"ProtectClock":            "yes",
	"ProtectKernelTunables":   "yes",
	"ProtectKernelModules":    "yes",
	"ProtectKernelLogs":       "yes",
	"ProtectControlGroups":    "yes",
	"ProcSubset":              "pid",
	"RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
	"RestrictNamespaces":      "yes",
	"RestrictRealtime":        "yes",
	"RestrictSUIDSGID":        "yes",
	"LockPersonality":         "yes",
	"MemoryDenyWriteExecute":  "yes",
	"SystemCallArchitectures": "native",
	"SystemCallErrorNumber":   "EPERM",
	"DevicePolicy":            "closed",
	"UMask":                   "0077",
	"Restart":                 "on-failure",
	"ConfigurationDirectory":  "keybroker",
}

// perUnit is what each unit adds; "-" means the key must be absent.
var perUnit = map[string]map[string]string{
	"keybroker.service": {
		"DynamicUser":         "yes",
		"PrivateUsers":        "yes",
		"StateDirectory":      "keybroker",
		"StateDirectoryMode":  "0700",
		"PrivateDevices":      "yes",
		"ProtectProc":         "invisible",
		"ExecStart":           "/usr/local/bin/keybroker serve --config /etc/keybroker/broker.hcl",
		"ExecReload":          "/bin/kill -HUP $MAINPID",
		"DeviceAllow":         "-",
		"SupplementaryGroups": "-",
		"RuntimeDirectory":    "-",
	},
	"keybroker-agent.service": {
		// Root (without capabilities) so that it can read the kernel's
		// event log, which only root may read.
		"User":                 "root",
		"DynamicUser":          "-",
		"SupplementaryGroups":  "tss",
		"DeviceAllow":          "/dev/tpmrm0 rw",
		"RuntimeDirectory":     "keybroker",
		"RuntimeDirectoryMode": "0755",
		// The agent reads callers' /proc/PID/stat and exe: another
		// user's process must stay visible.
		"ProtectProc":    "-",
		"PrivateUsers":   "-",
		"PrivateDevices": "-",
		"StateDirectory": "-",
		"ExecReload":     "-",
	},
}

func TestUnitHardening(t *testing.T) {
	for name, extra := range perUnit {
		t.Run(name, func(t *testing.T) {
			u := readUnit(t, filepath.Join("systemd", name))
			for key, want := range hardening {
				if got := u["Service"][key]; !slices.Equal(got, []string{want}) {
					t.Errorf("%s=%q, want exactly one %s=%s", key, got, key, want)
				}
			}
			filters := u["Service"]["SystemCallFilter"]
			if !slices.Contains(filters, "@system-service") || !slices.Contains(filters, "~@privileged @resources") {
				t.Errorf("SystemCallFilter=%q, want @system-service and ~@privileged @resources", filters)
			}
			for key, want := range extra {
				if want == "-" {
					if vs, ok := u["Service"][key]; ok {
						t.Errorf("%s=%q is set, want it absent", key, vs)
					}
					continue
				}
				if got := u["Service"][key]; !slices.Equal(got, []string{want}) {
					t.Errorf("%s=%q, want exactly one %s=%s", key, got, key, want)
				}
			}
			if got := u["Install"]["WantedBy"]; !slices.Equal(got, []string{"multi-user.target"}) {
				t.Errorf("WantedBy=%q, want multi-user.target", got)
			}
		})
	}
}

func TestAgentUnitCommand(t *testing.T) {
	u := readUnit(t, filepath.Join("systemd", "keybroker-agent.service"))
	exec := strings.Fields(u.service(t, "ExecStart"))
	want := []string{"/usr/local/bin/keybroker-agent", "run", "--tpm", "/dev/tpmrm0",
		"--broker", "${KEYBROKER_BROKER}", "--ca", "/etc/keybroker/broker-ca.pem",
		"--workload-socket", "/run/keybroker/agent.sock", "$KEYBROKER_AGENT_ARGS"}
	if !slices.Equal(exec, want) {
		t.Fatalf("ExecStart=%q\nwant %q", exec, want)
	}
	// Every variable the command uses is defined in the example
	// environment file the unit reads.
	if got := u.service(t, "EnvironmentFile"); got != "/etc/keybroker/agent.env" {
		t.Errorf("EnvironmentFile=%s, want /etc/keybroker/agent.env", got)
	}
	env := readEnvFile(t, "agent.env")
	for _, m := range regexp.MustCompile(`\$\{?([A-Z_]+)\}?`).FindAllStringSubmatch(strings.Join(exec, " "), -1) {
		if _, ok := env[m[1]]; !ok {
			t.Errorf("ExecStart uses $%s, which agent.env does not define", m[1])
		}
	}
}

// readEnvFile reads a systemd EnvironmentFile of plain KEY=VALUE lines.
func readEnvFile(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("unable to read %s: %v", path, err)
	}
	env := map[string]string{}
	for n, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		key, value, ok := strings.Cut(line, "=")
		if !ok || !regexp.MustCompile(`^[A-Z_][A-Z0-9_]*$`).MatchString(key) {
			t.Fatalf("%s:%d: not a KEY=VALUE line: %q", path, n+1, line)
		}
		env[key] = value
	}
	return env
}

func TestAgentDropInOnlyAddsPtrace(t *testing.T) {
	u := readUnit(t, filepath.Join("systemd", "keybroker-agent.service.d", "executable-selectors.conf"))
	if len(u) != 1 || len(u["Service"]) != 1 {
		t.Fatalf("drop-in sets %v, want only [Service] CapabilityBoundingSet", u)
	}
	if got := u.service(t, "CapabilityBoundingSet"); got != "CAP_SYS_PTRACE" {
		t.Errorf("CapabilityBoundingSet=%s, want CAP_SYS_PTRACE", got)
	}
}

// TestUnitFlagsExist runs each unit's command with --help and requires
// every flag the unit (and the example agent.env) passes to be listed.
func TestUnitFlagsExist(t *testing.T) {
	cases := map[string][]string{
		"keybroker.service":       {"serve"},
		"keybroker-agent.service": {"run"},
	}
	env := readEnvFile(t, "agent.env")
	for name, sub := range cases {
		t.Run(name, func(t *testing.T) {
			u := readUnit(t, filepath.Join("systemd", name))
			args := strings.Fields(os.Expand(u.service(t, "ExecStart"), func(k string) string { return env[k] }))
			bin := releaseBinary(t, filepath.Base(args[0]))
			help, err := exec.Command(bin, append(sub, "--help")...).CombinedOutput()
			if err != nil {
				t.Fatalf("%s %s --help: %v\n%s", args[0], sub, err, help)
			}
			for _, a := range args[1:] {
				if !strings.HasPrefix(a, "--") {
					continue
				}
				flag := strings.SplitN(a, "=", 2)[0]
				if !regexp.MustCompile(`(?m)^\s+(-\w, )?` + regexp.QuoteMeta(flag) + `\s`).Match(help) {
					t.Errorf("%s passes %s, which `%s --help` does not list", name, flag, strings.Join(sub, " "))
				}
			}
		})
	}
}
