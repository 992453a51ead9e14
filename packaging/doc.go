// Package packaging holds what operators install keybroker with, and the
// tests that keep it installable. It has no Go API.
//
//	systemd/keybroker.service        the broker: dynamic user, no devices, no capabilities
//	systemd/keybroker-agent.service  the agent's `run`: /dev/tpmrm0 only, no capabilities
//	systemd/keybroker-agent.service.d/executable-selectors.conf
//	                                 optional: attest other users' executables
//	broker.hcl, policies/, agent.env the example configuration the units run
//	Containerfile                    the broker's container image (`make container`)
//
// The tests check the units with `systemd-analyze verify` (no warning) and
// `systemd-analyze security --offline=yes` (exposure at most what systemd
// 252 scores them today), check that the hardening directives stay in place
// and that the example configuration loads, and build the release the way
// `make release` does: static, stamped, byte-identical when built twice
// from two source trees.
package packaging
