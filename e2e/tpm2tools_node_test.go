package e2e

// A third-party node: tpm2-tools commands alone, on swtpm, get a pcr_sealed
// TLS credential from `keybroker serve` through grpcurl over server
// reflection, and open it; once a sealed PCR changes, tpm2_unseal refuses.
// docs/protocol.md walks through the same commands.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/keybroker/keybroker/internal/swtpmtest"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// toolNodeBinaries are the tpm2-tools the node runs.
var toolNodeBinaries = []string{"tpm2_pcrextend", "tpm2_pcrread", "tpm2_createek", "tpm2_createak",
	"tpm2_nvread", "tpm2_startauthsession", "tpm2_policysecret", "tpm2_activatecredential", "tpm2_quote",
	"tpm2_import", "tpm2_load", "tpm2_policypcr", "tpm2_unseal", "tpm2_flushcontext"}

// allSHA256 selects every sha256 PCR, as the node quotes them.
var allSHA256 = "sha256:0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23"

// toolNode runs tpm2-tools against one swtpm, logging each command.
type toolNode struct {
	*tools
}

// do runs one tpm2-tools command and fails the test if it fails.
func (n *toolNode) do(args ...string) {
	n.t.Helper()
	n.t.Logf("$ %s", strings.Join(args, " "))
	n.run(args...)
}

// try runs one tpm2-tools command and returns its output and error.
func (n *toolNode) try(args ...string) (string, error) {
	n.t.Helper()
	n.t.Logf("$ %s", strings.Join(args, " "))
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Dir = n.dir
	cmd.Env = append(os.Environ(), "TPM2TOOLS_TCTI="+n.tcti)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (n *toolNode) write(name string, data []byte) {
	n.t.Helper()
	if err := os.WriteFile(filepath.Join(n.dir, name), data, 0o600); err != nil {
		n.t.Fatal(err)
	}
}

// withEKSession runs cmd with the EK authorized by a policy session holding
// PolicySecret(TPM_RH_ENDORSEMENT), the EK's authPolicy, then flushes the
// session and every transient object.
func (n *toolNode) withEKSession(cmd ...string) {
	n.t.Helper()
	n.do("tpm2_startauthsession", "--policy-session", "-S", "ek-session.ctx")
	n.do("tpm2_policysecret", "-S", "ek-session.ctx", "-c", "e")
	n.do(append(cmd, "-P", "session:ek-session.ctx")...)
	n.do("tpm2_flushcontext", "ek-session.ctx")
	n.do("tpm2_flushcontext", "-t")
}

// unseal unseals cek.ctx under a PolicyPCR session over sel into out.
func (n *toolNode) unseal(sel, out string) (string, error) {
	n.t.Helper()
	n.do("tpm2_startauthsession", "--policy-session", "-S", "pcr-session.ctx")
	n.do("tpm2_policypcr", "-S", "pcr-session.ctx", "-l", sel)
	msg, err := n.try("tpm2_unseal", "-c", "cek.ctx", "-p", "session:pcr-session.ctx", "-o", out)
	n.do("tpm2_flushcontext", "pcr-session.ctx")
	n.do("tpm2_flushcontext", "-t")
	return msg, err
}

// extend extends sha256 PCR pcr with the digest of event and returns the
// digest's hex.
func (n *toolNode) extend(pcr int, event string) string {
	n.t.Helper()
	d := sha256.Sum256([]byte(event))
	n.do("tpm2_pcrextend", fmt.Sprintf("%d:sha256=%x", pcr, d))
	return hex.EncodeToString(d[:])
}

func TestTPM2ToolsNode(t *testing.T) {
	skipUnlessE2E(t)
	skipUnlessInterop(t)
	for _, b := range toolNodeBinaries {
		if _, err := exec.LookPath(b); err != nil {
			if os.Getenv("CI") == "" {
				t.Skipf("%s not on PATH (apt-get install tpm2-tools); skipping, set CI to make this a failure", b)
			}
			t.Fatalf("%s not on PATH (apt-get install tpm2-tools)", b)
		}
	}
	g := &grpcurl{t: t, bin: grpcurlPath(t)}
	tpm := swtpmtest.Start(t, swtpmtest.Opts{})
	n := &toolNode{newTools(t, tpm)}

	// The boot the broker's policy expects, measured with tpm2-tools.
	pcr0, pcr7 := bootState(t, n)
	b := startBroker(t, brokerOpts{ekCAs: []ekCA{swtpmCA(tpm)}, policy: policyHCL(policyOpts{
		selector: `ek_cas = ["swtpm"]`, require: pcrRequire(pcr0, pcr7), mode: "pcr_sealed",
	})})
	g.b = b
	services, stderr, err := g.run(nil, "list")
	if err != nil || !slices.Contains(strings.Fields(services), brokerService) {
		t.Fatalf("grpcurl list over reflection = %q, %v %s; want %s", services, err, stderr, brokerService)
	}

	cred, ekPublic := attestWithTools(t, n, g)
	if cred.GetName() != "node-tls" || cred.GetType() != pb.CredentialType_TLS_CERTIFICATE ||
		cred.GetMode() != pb.ReleaseMode_PCR_SEALED {
		t.Fatalf("released %s %v %v, want node-tls TLS_CERTIFICATE PCR_SEALED", cred.GetName(), cred.GetType(), cred.GetMode())
	}
	sel := policyPCRSelection(t, cred.GetBlob().GetPcrs())
	if sel != "sha256:0,7" {
		t.Fatalf("credential sealed to %s, the policy says sha256:0,7", sel)
	}

	// Import under the EK, load, unseal under PolicyPCR: the CEK.
	blob := cred.GetBlob()
	n.write("cek.dup", blob.GetDuplicate())
	n.write("cek.seed", blob.GetEncryptedSeed())
	n.write("cek.pub", blob.GetPublicArea())
	n.withEKSession("tpm2_import", "-C", "ek.ctx", "-u", "cek.pub", "-i", "cek.dup", "-s", "cek.seed", "-r", "cek.priv")
	n.withEKSession("tpm2_load", "-C", "ek.ctx", "-u", "cek.pub", "-r", "cek.priv", "-c", "cek.ctx")
	if out, err := n.unseal(sel, "cek.bin"); err != nil {
		t.Fatalf("tpm2_unseal in the attested state: %v\n%s", err, out)
	}
	cek := n.read("cek.bin")
	if len(cek) != 32 {
		t.Fatalf("unsealed CEK has %d bytes, want 32", len(cek))
	}

	dir := t.TempDir()
	serial := openTLSCredential(t, cred.GetJwe(), cek, dir)
	wantCredential(t, dir, b, ekHash(t, ekPublic), serial)

	// Another boot: PCR 7 changes and the TPM refuses to unseal.
	n.extend(7, "e2e secure boot: disabled")
	out, err := n.unseal(sel, "cek-after.bin")
	if err == nil {
		t.Fatalf("tpm2_unseal after PCR 7 changed succeeded:\n%s", out)
	}
	wantContains(t, "tpm2_unseal output", out, "policy check failed")
	if _, err := os.Stat(filepath.Join(n.dir, "cek-after.bin")); !os.IsNotExist(err) {
		t.Errorf("tpm2_unseal refused yet wrote cek-after.bin (%v)", err)
	}
}

// bootState measures PCR 0 and 7 with tpm2_pcrextend, checks them with
// tpm2_pcrread and returns their values in hex.
func bootState(t *testing.T, n *toolNode) (pcr0, pcr7 string) {
	t.Helper()
	want := map[int][]byte{}
	for pcr, event := range map[int]string{0: "e2e firmware v1", 7: "e2e secure boot: enabled"} {
		d := sha256.Sum256([]byte(event))
		n.extend(pcr, event)
		v := sha256.Sum256(append(make([]byte, 32), d[:]...))
		want[pcr] = v[:]
	}
	n.do("tpm2_pcrread", "sha256:0,7", "-o", "boot-pcrs.bin")
	if got := n.read("boot-pcrs.bin"); !bytes.Equal(got, append(want[0], want[7]...)) {
		t.Fatalf("tpm2_pcrread sha256:0,7 = %x, want %x%x", got, want[0], want[7])
	}
	return hex.EncodeToString(want[0]), hex.EncodeToString(want[7])
}

// attestWithTools runs the two round trips: EK, AK, EK certificate,
// Challenge, ActivateCredential, Quote, Attest (which presents the EK and AK
// material of the Challenge again). It returns the one released
// credential and the EK's TPMT_PUBLIC.
func attestWithTools(t *testing.T, n *toolNode, g *grpcurl) (*pb.Credential, []byte) {
	t.Helper()
	n.do("tpm2_createek", "-G", "rsa", "-c", "ek.ctx", "-u", "ek.pub", "-f", "tpmt")
	n.do("tpm2_flushcontext", "-t")
	n.do("tpm2_createak", "-C", "ek.ctx", "-c", "ak.ctx", "-G", "rsa", "-g", "sha256", "-s", "rsassa",
		"-u", "ak.pub", "-f", "tpmt", "-n", "ak.name")
	n.do("tpm2_flushcontext", "-t")
	n.do("tpm2_nvread", "0x1c00002", "-C", "o", "-o", "ek-cert.der")

	b64 := base64.StdEncoding.EncodeToString
	var ch pb.ChallengeResponse
	g.call("keybroker.v1.Broker/Challenge", map[string]string{
		"ekPublic":      b64(n.read("ek.pub")),
		"ekCertificate": b64(n.read("ek-cert.der")),
		"akPublic":      b64(n.read("ak.pub")),
	}, &ch)

	// tpm2_activatecredential's file: magic, version, TPM2B_ID_OBJECT,
	// TPM2B_ENCRYPTED_SECRET.
	credIn := binary.BigEndian.AppendUint32(nil, 0xBADCC0DE)
	credIn = binary.BigEndian.AppendUint32(credIn, 1)
	credIn = append(append(credIn, ch.GetCredentialBlob()...), ch.GetEncryptedSecret()...)
	n.write("challenge.cred", credIn)
	n.withEKSession("tpm2_activatecredential", "-c", "ak.ctx", "-C", "ek.ctx", "-i", "challenge.cred", "-o", "secret.bin")
	secret := n.read("secret.bin")

	n.do("tpm2_quote", "-c", "ak.ctx", "-l", allSHA256, "-q", hex.EncodeToString(secret), "-g", "sha256",
		"-m", "quote.msg", "-s", "quote.sig", "-o", "quote.pcrs", "-F", "values")
	n.do("tpm2_flushcontext", "-t")
	values := n.read("quote.pcrs")
	if len(values) != 24*sha256.Size {
		t.Fatalf("tpm2_quote wrote %d bytes of PCR values, want %d", len(values), 24*sha256.Size)
	}
	pcrs := map[string]string{}
	for i := range 24 {
		pcrs[strconv.Itoa(i)] = b64(values[i*sha256.Size : (i+1)*sha256.Size])
	}
	var resp pb.AttestResponse
	g.call("keybroker.v1.Broker/Attest", map[string]any{
		"challengeId":   ch.GetChallengeId(),
		"ekPublic":      b64(n.read("ek.pub")),
		"ekCertificate": b64(n.read("ek-cert.der")),
		"akPublic":      b64(n.read("ak.pub")),
		"quotes": []any{map[string]any{
			"attest":    b64(n.read("quote.msg")),
			"signature": b64(n.read("quote.sig")),
			"pcrs":      map[string]any{"hashAlg": 11, "values": pcrs},
		}},
	}, &resp)
	if resp.GetReceiptId() == "" || len(resp.GetCredentials()) != 1 {
		t.Fatalf("Attest released %d credential(s) with receipt %q, want 1 with a receipt",
			len(resp.GetCredentials()), resp.GetReceiptId())
	}
	return resp.GetCredentials()[0], n.read("ek.pub")
}

// policyPCRSelection is the tpm2-tools PCR selection (e.g. sha256:0,7) of an
// import blob's pcrs.
func policyPCRSelection(t *testing.T, p *pb.PCRValues) string {
	t.Helper()
	if p.GetHashAlg() != 0x000B {
		t.Fatalf("credential sealed to bank 0x%04x, want sha256", p.GetHashAlg())
	}
	var idx []int
	for i := range p.GetValues() {
		idx = append(idx, int(i))
	}
	slices.Sort(idx)
	s := make([]string, len(idx))
	for i, v := range idx {
		s[i] = strconv.Itoa(v)
	}
	return "sha256:" + strings.Join(s, ",")
}

// openTLSCredential decrypts the JWE (dir, A256GCM) with the CEK, writes the
// TLSCredential's key.pem, cert.pem and chain.pem into dir, and returns the
// certificate's serial in hex.
func openTLSCredential(t *testing.T, compact string, cek []byte, dir string) string {
	t.Helper()
	obj, err := jose.ParseEncrypted(compact, []jose.KeyAlgorithm{jose.DIRECT}, []jose.ContentEncryption{jose.A256GCM})
	if err != nil {
		t.Fatalf("credential JWE: %v", err)
	}
	if obj.Header.KeyID != "node-tls" {
		t.Errorf("JWE kid %q, want node-tls", obj.Header.KeyID)
	}
	plain, err := obj.Decrypt(cek)
	if err != nil {
		t.Fatalf("unable to decrypt the JWE with the unsealed CEK: %v", err)
	}
	var tc pb.TLSCredential
	if err := proto.Unmarshal(plain, &tc); err != nil {
		t.Fatalf("JWE payload is not a TLSCredential: %v", err)
	}
	for name, data := range map[string][]byte{"key.pem": tc.GetKeyPem(), "cert.pem": tc.GetCertificatePem(), "chain.pem": tc.GetChainPem()} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	block, _ := pem.Decode(tc.GetCertificatePem())
	if block == nil {
		t.Fatal("TLSCredential certificate_pem holds no PEM block")
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return leaf.SerialNumber.Text(16)
}

// grpcurl: a generic gRPC client that learns the broker's API from server
// reflection, for the tpm2-tools node.

// grpcurlVersion is the grpcurl .ci/run builds from the module proxy; keep
// the two in step.
const grpcurlVersion = "v1.9.3"

// grpcurlEnv names a grpcurl binary to use instead of the cached build.
const grpcurlEnv = "KEYBROKER_GRPCURL"

// grpcurlPath finds grpcurl: $KEYBROKER_GRPCURL, else the build .ci/run
// caches in $HOME/.cache/keybroker/grpcurl-<version>/grpcurl. Without it the
// test is skipped, unless CI is set, where it fails.
func grpcurlPath(t *testing.T) string {
	t.Helper()
	path := os.Getenv(grpcurlEnv)
	if path == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			t.Fatalf("unable to find the home directory: %v", err)
		}
		path = filepath.Join(home, ".cache", "keybroker", "grpcurl-"+grpcurlVersion, "grpcurl")
	}
	if fi, err := os.Stat(path); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
		return path
	}
	msg := "grpcurl not found at " + path + " (build it with: GOBIN=" + filepath.Dir(path) +
		" go install github.com/fullstorydev/grpcurl/cmd/grpcurl@" + grpcurlVersion + ", or set " + grpcurlEnv + ")"
	if os.Getenv("CI") == "" {
		t.Skip(msg + "; skipping, set CI to make this a failure")
	}
	t.Fatal(msg)
	return ""
}

// grpcurl calls the broker at b with TLS pinned to its CA.
type grpcurl struct {
	t   *testing.T
	bin string
	b   *brokerProc
}

// run runs grpcurl with args after the TLS flags and the address, feeding
// stdin; it returns stdout, or the error and stderr when grpcurl fails.
func (g *grpcurl) run(stdin []byte, args ...string) (string, string, error) {
	g.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), processTimeout)
	defer cancel()
	full := append([]string{"-cacert", g.b.caFile}, args[:len(args)-1]...)
	full = append(full, g.b.addr, args[len(args)-1])
	cmd := exec.CommandContext(ctx, g.bin, full...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	g.t.Logf("$ grpcurl %s  → %v in %v", strings.Join(full, " "), err, time.Since(start).Round(time.Millisecond))
	return stdout.String(), stderr.String(), err
}

// call invokes method (e.g. keybroker.v1.Broker/Challenge) with req as JSON
// and decodes the JSON reply into resp, failing the test on any error.
func (g *grpcurl) call(method string, req any, resp proto.Message) {
	g.t.Helper()
	in, err := json.Marshal(req)
	if err != nil {
		g.t.Fatal(err)
	}
	out, stderr, err := g.run(in, "-d", "@", method)
	if err != nil {
		g.t.Fatalf("grpcurl %s: %v\n%s%s", method, err, out, stderr)
	}
	if err := protojson.Unmarshal([]byte(out), resp); err != nil {
		g.t.Fatalf("grpcurl %s replied with what is not a %T: %v\n%s", method, resp, err, out)
	}
}
