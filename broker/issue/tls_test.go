package issue

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestIssueTLS(t *testing.T) {
	ca, _ := newTestCA(t, t0)
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca.BundlePEM()) {
		t.Fatal("BundlePEM holds no certificate")
	}
	server, client := x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth
	tests := []struct {
		name    string
		tmpl    TLSTemplate
		wantEKU []x509.ExtKeyUsage
	}{
		{name: "server", tmpl: TLSTemplate{CommonName: "web", DNSNames: []string{"web.example", "*.web.example"}, TTL: time.Hour, Server: true}, wantEKU: []x509.ExtKeyUsage{server}},
		{name: "client", tmpl: TLSTemplate{CommonName: "node-1", TTL: time.Hour, Client: true}, wantEKU: []x509.ExtKeyUsage{client}},
		{name: "neither means both", tmpl: TLSTemplate{IPAddresses: []net.IP{net.ParseIP("10.0.0.1"), net.ParseIP("::1")}, TTL: time.Hour}, wantEKU: []x509.ExtKeyUsage{server, client}},
		{name: "both", tmpl: TLSTemplate{DNSNames: []string{"svc"}, TTL: time.Hour, Server: true, Client: true}, wantEKU: []x509.ExtKeyUsage{server, client}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cred, err := ca.IssueTLS(tt.tmpl)
			if err != nil {
				t.Fatal(err)
			}
			leaf := cred.Certificate
			if !slices.Equal(leaf.ExtKeyUsage, tt.wantEKU) {
				t.Errorf("ExtKeyUsage = %v, want %v", leaf.ExtKeyUsage, tt.wantEKU)
			}
			if leaf.IsCA || leaf.KeyUsage != x509.KeyUsageDigitalSignature {
				t.Errorf("IsCA = %v, KeyUsage = %v; want a leaf for digital signatures", leaf.IsCA, leaf.KeyUsage)
			}
			if leaf.Subject.CommonName != tt.tmpl.CommonName || !slices.Equal(leaf.DNSNames, tt.tmpl.DNSNames) {
				t.Errorf("names = %q %q, want %q %q", leaf.Subject.CommonName, leaf.DNSNames, tt.tmpl.CommonName, tt.tmpl.DNSNames)
			}
			if !slices.EqualFunc(leaf.IPAddresses, tt.tmpl.IPAddresses, net.IP.Equal) {
				t.Errorf("IPAddresses = %v, want %v", leaf.IPAddresses, tt.tmpl.IPAddresses)
			}
			for _, eku := range tt.wantEKU {
				if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: t0, KeyUsages: []x509.ExtKeyUsage{eku}}); err != nil {
					t.Errorf("Verify for %v: %v", eku, err)
				}
			}
			for _, eku := range []x509.ExtKeyUsage{server, client} {
				if slices.Contains(tt.wantEKU, eku) {
					continue
				}
				if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: t0, KeyUsages: []x509.ExtKeyUsage{eku}}); err == nil {
					t.Errorf("Verify for %v succeeded, want failure", eku)
				}
			}
			for _, n := range tt.tmpl.DNSNames {
				host := strings.Replace(n, "*", "any", 1)
				if err := leaf.VerifyHostname(host); err != nil {
					t.Errorf("VerifyHostname(%q): %v", host, err)
				}
			}
			for _, ip := range tt.tmpl.IPAddresses {
				if err := leaf.VerifyHostname(ip.String()); err != nil {
					t.Errorf("VerifyHostname(%v): %v", ip, err)
				}
			}

			// The PEM forms agree with the parsed certificate.
			kb, _ := pem.Decode(cred.KeyPEM)
			if kb == nil || kb.Type != "PRIVATE KEY" {
				t.Fatalf("KeyPEM is not a PKCS#8 PEM block")
			}
			key, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			ek, ok := key.(*ecdsa.PrivateKey)
			if !ok || ek.Curve != elliptic.P256() || !ek.PublicKey.Equal(leaf.PublicKey) {
				t.Errorf("key is %T, not the P-256 key of the certificate", key)
			}
			if _, err := tls.X509KeyPair(append(cred.CertificatePEM, cred.ChainPEM...), cred.KeyPEM); err != nil {
				t.Errorf("X509KeyPair: %v", err)
			}
			chain, err := parseCertsPEM(cred.ChainPEM)
			if err != nil || len(chain) != 1 || !chain[0].Equal(ca.Certificate()) {
				t.Errorf("ChainPEM is not the CA certificate: %v", err)
			}
			if cred.Serial != leaf.SerialNumber.Text(16) || leaf.SerialNumber.BitLen() > 128 || leaf.SerialNumber.Sign() <= 0 {
				t.Errorf("Serial %q does not match %v or is not 128-bit positive", cred.Serial, leaf.SerialNumber)
			}
			if !cred.NotBefore.Equal(leaf.NotBefore) || !cred.NotAfter.Equal(leaf.NotAfter) {
				t.Errorf("validity fields disagree with the certificate")
			}
		})
	}
}

func TestIssueTLSValidity(t *testing.T) {
	ca, _ := newTestCA(t, t0)
	for _, ttl := range []time.Duration{time.Minute, 24 * time.Hour, MaxTLSTTL} {
		cred, err := ca.IssueTLS(TLSTemplate{CommonName: "n", TTL: ttl})
		if err != nil {
			t.Fatal(err)
		}
		if want := t0.Add(-time.Minute); !cred.NotBefore.Equal(want) {
			t.Errorf("TTL %v: NotBefore = %v, want %v", ttl, cred.NotBefore, want)
		}
		if want := t0.Add(ttl); !cred.NotAfter.Equal(want) {
			t.Errorf("TTL %v: NotAfter = %v, want %v", ttl, cred.NotAfter, want)
		}
	}

	// A certificate never outlives its CA.
	late := *ca
	late.now = fixedClock(ca.Certificate().NotAfter.Add(-time.Hour))
	cred, err := late.IssueTLS(TLSTemplate{CommonName: "n", TTL: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if !cred.NotAfter.Equal(ca.Certificate().NotAfter) {
		t.Errorf("NotAfter = %v, want the CA's %v", cred.NotAfter, ca.Certificate().NotAfter)
	}
	// Nor is one signed once the CA has expired.
	expired := *ca
	expired.now = fixedClock(ca.Certificate().NotAfter.Add(time.Second))
	if cred, err := expired.IssueTLS(TLSTemplate{CommonName: "n", TTL: time.Hour}); cred != nil || err == nil || !strings.Contains(err.Error(), "ca certificate expired at") {
		t.Errorf("IssueTLS after the CA's expiry = %v, %v; want nothing and an expiry error", cred, err)
	}

	// Serials are fresh.
	a, _ := ca.IssueTLS(TLSTemplate{CommonName: "n", TTL: time.Hour})
	b, _ := ca.IssueTLS(TLSTemplate{CommonName: "n", TTL: time.Hour})
	if a.Serial == b.Serial {
		t.Errorf("two certificates share serial %s", a.Serial)
	}
}

func TestIssueTLSBadTemplate(t *testing.T) {
	ca, _ := newTestCA(t, t0)
	tests := []struct {
		name    string
		tmpl    TLSTemplate
		wantErr string
	}{
		{name: "zero ttl", tmpl: TLSTemplate{CommonName: "n"}, wantErr: "ttl must be positive"},
		{name: "negative ttl", tmpl: TLSTemplate{CommonName: "n", TTL: -time.Hour}, wantErr: "ttl must be positive"},
		{name: "ttl over a year", tmpl: TLSTemplate{CommonName: "n", TTL: MaxTLSTTL + time.Second}, wantErr: "ttl 8760h0m1s exceeds the maximum of 8760h0m0s"},
		{name: "no names", tmpl: TLSTemplate{TTL: time.Hour}, wantErr: "a common name, dns name or ip address is required"},
		{name: "long cn", tmpl: TLSTemplate{CommonName: strings.Repeat("c", 65), TTL: time.Hour}, wantErr: "common name is longer than 64 characters"},
		{name: "empty dns name", tmpl: TLSTemplate{DNSNames: []string{""}, TTL: time.Hour}, wantErr: `dns name "" cannot be empty`},
		{name: "space in dns name", tmpl: TLSTemplate{DNSNames: []string{"a b"}, TTL: time.Hour}, wantErr: `dns name "a b" contains invalid character ' '`},
		{name: "empty label", tmpl: TLSTemplate{DNSNames: []string{"a..b"}, TTL: time.Hour}, wantErr: `dns name "a..b" has an empty or overlong label`},
		{name: "bare wildcard", tmpl: TLSTemplate{DNSNames: []string{"*"}, TTL: time.Hour}, wantErr: `dns name "*" contains invalid character '*'`},
		{name: "inner wildcard", tmpl: TLSTemplate{DNSNames: []string{"a.*.b"}, TTL: time.Hour}, wantErr: `dns name "a.*.b" contains invalid character '*'`},
		{name: "hyphen edge", tmpl: TLSTemplate{DNSNames: []string{"-a.b"}, TTL: time.Hour}, wantErr: `has a label starting or ending with '-'`},
		{name: "bad ip", tmpl: TLSTemplate{IPAddresses: []net.IP{{1, 2, 3}}, TTL: time.Hour}, wantErr: "ip address ?010203 is invalid"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ca.IssueTLS(tt.tmpl)
			if err == nil {
				t.Fatalf("IssueTLS succeeded, want error %q", tt.wantErr)
			}
			if !strings.HasPrefix(err.Error(), "unable to issue tls certificate: invalid template: ") {
				t.Errorf("error %q does not name the operation", err)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("IssueTLS error = %q, want it to contain %q", err, tt.wantErr)
			}
		})
	}

	// Every problem is reported, not just the first.
	_, err := ca.IssueTLS(TLSTemplate{DNSNames: []string{"a b", "ok"}, TTL: -1})
	for _, want := range []string{"ttl must be positive", `dns name "a b"`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not mention %q", err, want)
		}
	}
}

func TestServingCertificateHandshake(t *testing.T) {
	ca, err := LoadOrCreateCA(t.TempDir(), CAOpts{}) // real clock: the handshake checks validity now
	if err != nil {
		t.Fatal(err)
	}
	serving, err := ca.ServingCertificate([]string{"localhost", "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	leaf := serving.Leaf
	if leaf.Subject.CommonName != "localhost" || !slices.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}) {
		t.Errorf("serving certificate CN %q EKU %v", leaf.Subject.CommonName, leaf.ExtKeyUsage)
	}
	if got := leaf.NotAfter.Sub(leaf.NotBefore); got != ServingTTL+time.Minute {
		t.Errorf("serving certificate lifetime = %v, want %v", got, ServingTTL+time.Minute)
	}

	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{serving},
		MinVersion:   tls.VersionTLS13,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				_, _ = conn.Write([]byte("ok"))
			}()
		}
	}()

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.BundlePEM())
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	for _, serverName := range []string{"", "localhost"} { // "" checks the IP SAN
		conn, err := tls.Dial("tcp", net.JoinHostPort("127.0.0.1", port), &tls.Config{
			RootCAs:    pool,
			ServerName: serverName,
			MinVersion: tls.VersionTLS13,
		})
		if err != nil {
			t.Fatalf("tls.Dial (ServerName %q): %v", serverName, err)
		}
		got, err := io.ReadAll(conn)
		conn.Close()
		if err != nil || string(got) != "ok" {
			t.Errorf("read %q, %v; want ok", got, err)
		}
	}

	// A name not in the certificate is refused.
	conn, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: pool, ServerName: "broker.example"})
	if err == nil {
		conn.Close()
		t.Errorf("handshake for a name not in the certificate succeeded")
	}
}

func TestServingCertificateErrors(t *testing.T) {
	ca, _ := newTestCA(t, t0)
	tests := []struct {
		name    string
		names   []string
		wantErr string
	}{
		{name: "no names", wantErr: "unable to issue serving certificate: at least one name is required"},
		{name: "bad name", names: []string{"ok", "not ok"}, wantErr: `dns name "not ok" contains invalid character ' '`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ca.ServingCertificate(tt.names)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("ServingCertificate error = %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

// TestIssueTLSForKey: the certificate is for the given key, chains to the
// CA, and no key is returned; a bad template is refused as for IssueTLS.
func TestIssueTLSForKey(t *testing.T) {
	ca, _ := newTestCA(t, t0)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cred, err := ca.IssueTLSForKey(TLSTemplate{CommonName: "web", DNSNames: []string{"web.example"}, TTL: time.Hour}, key.Public())
	if err != nil {
		t.Fatal(err)
	}
	if cred.KeyPEM != nil {
		t.Error("IssueTLSForKey returned a key")
	}
	if !key.PublicKey.Equal(cred.Certificate.PublicKey) {
		t.Error("the certificate is not for the given key")
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Certificate())
	if _, err := cred.Certificate.Verify(x509.VerifyOptions{Roots: pool, DNSName: "web.example", CurrentTime: t0.Add(time.Minute)}); err != nil {
		t.Errorf("the certificate does not verify: %v", err)
	}
	_, err = ca.IssueTLSForKey(TLSTemplate{TTL: time.Hour}, key.Public())
	if err == nil || err.Error() != "unable to issue tls certificate: invalid template: a common name, dns name or ip address is required" {
		t.Errorf("IssueTLSForKey with no name = %v", err)
	}
}
