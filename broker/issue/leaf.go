package issue

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"math/big"
	"math/bits"
	"net"
	"net/url"
	"slices"
	"time"
	"unicode/utf8"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// leafTemplate is a leaf certificate the CA signs on the release path
// (signTLS, (*SPIFFE).sign): what such a certificate may hold, and
// nothing else. Every leaf also gets basic constraints CA=false and, when
// the CA certificate has a subject key ID, that ID as its authority key ID,
// as x509.CreateCertificate adds them.
type leafTemplate struct {
	serial *big.Int
	// Subject attributes, in x509's order: O, CN, serialNumber.
	organization []string
	commonName   string
	serialNumber string
	notBefore    time.Time
	notAfter     time.Time
	keyUsage     x509.KeyUsage
	extKeyUsage  []x509.ExtKeyUsage
	dnsNames     []string
	ipAddresses  []net.IP
	uris         []*url.URL
}

// x509 is the template x509.CreateCertificate signs for l.
func (l *leafTemplate) x509() *x509.Certificate {
	return &x509.Certificate{
		SerialNumber:          l.serial,
		Subject:               pkix.Name{CommonName: l.commonName, Organization: l.organization, SerialNumber: l.serialNumber},
		DNSNames:              l.dnsNames,
		IPAddresses:           l.ipAddresses,
		URIs:                  l.uris,
		NotBefore:             l.notBefore,
		NotAfter:              l.notAfter,
		KeyUsage:              l.keyUsage,
		ExtKeyUsage:           l.extKeyUsage,
		BasicConstraintsValid: true,
	}
}

// signLeaf returns the DER certificate of l for pub, signed by the CA.
//
// For an ECDSA P-256 CA and a P-256, P-384 or RSA subject key it encodes
// the certificate itself (encodeTBS), byte for byte as
// x509.CreateCertificate would, without encoding/asn1's reflection; for
// anything else it calls x509.CreateCertificate. Either way the signature
// is checked against the CA's public key before the certificate is
// returned, so a faulty signer issues nothing.
func (c *CA) signLeaf(l *leafTemplate, pub crypto.PublicKey) ([]byte, error) {
	caKey, ok := c.cert.PublicKey.(*ecdsa.PublicKey)
	if !ok || caKey.Curve != elliptic.P256() {
		return x509.CreateCertificate(rand.Reader, l.x509(), c.cert, pub, c.signer)
	}
	tbs, ok := l.encodeTBS(c.cert, pub)
	if !ok {
		return x509.CreateCertificate(rand.Reader, l.x509(), c.cert, pub, c.signer)
	}
	digest := sha256.Sum256(tbs)
	var sig []byte
	var err error
	if ms, ok := c.signer.(crypto.MessageSigner); ok {
		sig, err = ms.SignMessage(rand.Reader, tbs, crypto.SHA256)
	} else {
		sig, err = c.signer.Sign(rand.Reader, digest[:], crypto.SHA256)
	}
	if err != nil {
		return nil, err
	}
	if !ecdsa.VerifyASN1(caKey, digest[:], sig) {
		return nil, errors.New("signature returned by the ca key does not verify with the ca certificate")
	}
	b := cryptobyte.NewBuilder(make([]byte, 0, len(tbs)+len(sig)+32))
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddBytes(tbs)
		b.AddBytes(derECDSAWithSHA256)
		b.AddASN1(cbasn1.BIT_STRING, func(b *cryptobyte.Builder) {
			b.AddUint8(0) // no unused bits
			b.AddBytes(sig)
		})
	})
	return b.Bytes()
}

// DER encodings (tag, length, value) of the object identifiers a leaf
// holds and of its fixed parts, made once.
var (
	derOrganization      = derOID(2, 5, 4, 10)
	derCommonName        = derOID(2, 5, 4, 3)
	derSerialNumber      = derOID(2, 5, 4, 5)
	derExtKeyUsage       = derOID(2, 5, 29, 15)
	derExtExtKeyUsage    = derOID(2, 5, 29, 37)
	derExtAuthorityKeyID = derOID(2, 5, 29, 35)
	derExtSubjectAltName = derOID(2, 5, 29, 17)
	derServerAuth        = derOID(1, 3, 6, 1, 5, 5, 7, 3, 1)
	derClientAuth        = derOID(1, 3, 6, 1, 5, 5, 7, 3, 2)

	// derVersion3 is the TBSCertificate's [0] EXPLICIT version v3.
	derVersion3 = der(func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) { b.AddASN1Int64(2) })
	})
	// derECDSAWithSHA256 is the AlgorithmIdentifier of a P-256 CA's
	// signature: no parameters.
	derECDSAWithSHA256 = derAlgorithm(derOID(1, 2, 840, 10045, 4, 3, 2), nil)
	// The AlgorithmIdentifiers of subject public keys.
	derKeyP256 = derAlgorithm(derOID(1, 2, 840, 10045, 2, 1), derOID(1, 2, 840, 10045, 3, 1, 7))
	derKeyP384 = derAlgorithm(derOID(1, 2, 840, 10045, 2, 1), derOID(1, 3, 132, 0, 34))
	derKeyRSA  = derAlgorithm(derOID(1, 2, 840, 113549, 1, 1, 1), []byte{0x05, 0x00}) // NULL parameters
	// derBasicConstraintsLeaf is the critical basic constraints extension
	// of a leaf: CA=false, no path length, an empty SEQUENCE.
	derBasicConstraintsLeaf = der(func(b *cryptobyte.Builder) {
		addExtension(b, derOID(2, 5, 29, 19), true, func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(*cryptobyte.Builder) {})
		})
	})
)

// der returns what add adds. It cannot fail: the values above are fixed
// (a mistake would show as bytes that differ from x509.CreateCertificate's
// in the tests), and an attribute is a string of any length.
func der(add func(*cryptobyte.Builder)) []byte {
	var b cryptobyte.Builder
	add(&b)
	out, _ := b.Bytes()
	return out
}

func derOID(arcs ...int) []byte {
	return der(func(b *cryptobyte.Builder) { b.AddASN1ObjectIdentifier(asn1.ObjectIdentifier(arcs)) })
}

// derAlgorithm returns an AlgorithmIdentifier; params (DER) may be nil.
func derAlgorithm(oid, params []byte) []byte {
	return der(func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddBytes(oid)
			b.AddBytes(params)
		})
	})
}

// GeneralName tags of a subjectAltName (RFC 5280 4.2.1.6).
const (
	sanDNS = 2
	sanURI = 6
	sanIP  = 7
)

// encodeTBS returns the DER TBSCertificate of l for pub, issued by issuer
// (whose key is ECDSA P-256) as x509.CreateCertificate encodes it, or
// false when l or pub holds something it does not encode: the caller then
// leaves the whole certificate to x509.CreateCertificate.
func (l *leafTemplate) encodeTBS(issuer *x509.Certificate, pub crypto.PublicKey) ([]byte, bool) {
	if l.serial == nil || l.serial.Sign() < 0 || len(issuer.RawSubject) == 0 {
		return nil, false
	}
	subject, ok := l.encodeSubject()
	if !ok {
		return nil, false
	}
	// x509.CreateCertificate takes the issuer's subject key ID as the
	// authority key ID unless the subject equals the issuer's.
	var authorityKeyID []byte
	if !bytes.Equal(subject, issuer.RawSubject) {
		authorityKeyID = issuer.SubjectKeyId
	}
	b := cryptobyte.NewBuilder(make([]byte, 0, 512))
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddBytes(derVersion3)
		b.AddASN1BigInt(l.serial)
		b.AddBytes(derECDSAWithSHA256)
		b.AddBytes(issuer.RawSubject)
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			addTime(b, l.notBefore)
			addTime(b, l.notAfter)
		})
		b.AddBytes(subject)
		addPublicKey(b, pub)
		b.AddASN1(cbasn1.Tag(3).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				l.addExtensions(b, authorityKeyID, bytes.Equal(subject, emptySubject))
			})
		})
	})
	tbs, err := b.Bytes()
	if err != nil {
		return nil, false
	}
	return tbs, true
}

// emptySubject is the DER of a subject with no attributes.
var emptySubject = []byte{0x30, 0x00}

// encodeSubject returns the DER Name of l's subject as pkix.Name's
// ToRDNSequence and encoding/asn1 make it: one RDN per attribute type, the
// values of a multi-valued RDN in DER SET OF order, each value a
// PrintableString when it can be one and a UTF8String otherwise. It
// returns false for a value that is not valid UTF-8.
func (l *leafTemplate) encodeSubject() ([]byte, bool) {
	for _, s := range l.organization {
		if !utf8.ValidString(s) {
			return nil, false
		}
	}
	if !utf8.ValidString(l.commonName) || !utf8.ValidString(l.serialNumber) {
		return nil, false
	}
	b := cryptobyte.NewBuilder(make([]byte, 0, 128))
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		addRDN(b, derOrganization, l.organization...)
		if l.commonName != "" {
			addRDN(b, derCommonName, l.commonName)
		}
		if l.serialNumber != "" {
			addRDN(b, derSerialNumber, l.serialNumber)
		}
	})
	out, err := b.Bytes()
	return out, err == nil
}

// addRDN adds the relative distinguished name of values of type oid, or
// nothing when there are none.
func addRDN(b *cryptobyte.Builder, oid []byte, values ...string) {
	switch len(values) {
	case 0:
		return
	case 1:
		b.AddASN1(cbasn1.SET, func(b *cryptobyte.Builder) { addAttribute(b, oid, values[0]) })
		return
	}
	atvs := make([][]byte, len(values))
	for i, v := range values {
		atvs[i] = der(func(b *cryptobyte.Builder) { addAttribute(b, oid, v) })
	}
	slices.SortFunc(atvs, bytes.Compare) // DER SET OF order
	b.AddASN1(cbasn1.SET, func(b *cryptobyte.Builder) {
		for _, atv := range atvs {
			b.AddBytes(atv)
		}
	})
}

// addAttribute adds an AttributeTypeAndValue with a string value.
func addAttribute(b *cryptobyte.Builder, oid []byte, value string) {
	tag := cbasn1.PrintableString
	if !isPrintable(value) {
		tag = cbasn1.UTF8String
	}
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddBytes(oid)
		b.AddASN1(tag, func(b *cryptobyte.Builder) { b.AddBytes([]byte(value)) })
	})
}

// isPrintable reports whether encoding/asn1 encodes s as a PrintableString:
// every byte in the PrintableString set, '*' and '&' excluded.
func isPrintable(s string) bool {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9',
			'\'' <= c && c <= ')', '+' <= c && c <= '/', c == ' ', c == ':', c == '=', c == '?':
		default:
			return false
		}
	}
	return true
}

// addTime adds t in UTC as encoding/asn1 does: a UTCTime from 1950 to
// 2049, a GeneralizedTime otherwise, to the second. A year beyond 9999
// sets an error.
func addTime(b *cryptobyte.Builder, t time.Time) {
	t = t.UTC()
	year := t.Year()
	tag := cbasn1.UTCTime
	if year < 1950 || year >= 2050 {
		tag = cbasn1.GeneralizedTime
	}
	if year < 0 || year > 9999 {
		b.SetError(errors.New("time cannot be encoded"))
		return
	}
	var buf [15]byte
	s := buf[:0]
	if tag == cbasn1.UTCTime {
		s = appendDigits(s, year%100, 2)
	} else {
		s = appendDigits(s, year, 4)
	}
	_, month, day := t.Date()
	hour, minute, sec := t.Clock()
	s = appendDigits(s, int(month), 2)
	s = appendDigits(s, day, 2)
	s = appendDigits(s, hour, 2)
	s = appendDigits(s, minute, 2)
	s = appendDigits(s, sec, 2)
	s = append(s, 'Z')
	b.AddASN1(tag, func(b *cryptobyte.Builder) { b.AddBytes(s) })
}

// appendDigits appends v as n decimal digits, zero-padded.
func appendDigits(dst []byte, v, n int) []byte {
	start := len(dst)
	for range n {
		dst = append(dst, '0')
	}
	for i := len(dst) - 1; i >= start; i-- {
		dst[i] += byte(v % 10)
		v /= 10
	}
	return dst
}

// addPublicKey adds the SubjectPublicKeyInfo of an ECDSA P-256 or P-384
// key or an RSA key, and sets an error for any other key.
func addPublicKey(b *cryptobyte.Builder, pub crypto.PublicKey) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		var alg []byte
		switch k.Curve {
		case elliptic.P256():
			alg = derKeyP256
		case elliptic.P384():
			alg = derKeyP384
		default:
			b.SetError(errors.New("unsupported curve"))
			return
		}
		point, err := k.Bytes()
		if err != nil {
			b.SetError(err)
			return
		}
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddBytes(alg)
			addBitString(b, func(b *cryptobyte.Builder) { b.AddBytes(point) })
		})
	case *rsa.PublicKey:
		if k.N == nil || k.N.Sign() <= 0 {
			b.SetError(errors.New("invalid rsa key"))
			return
		}
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddBytes(derKeyRSA)
			addBitString(b, func(b *cryptobyte.Builder) {
				b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
					b.AddASN1BigInt(k.N)
					b.AddASN1Int64(int64(k.E))
				})
			})
		})
	default:
		b.SetError(errors.New("unsupported public key type"))
	}
}

// addBitString adds a BIT STRING of whole bytes.
func addBitString(b *cryptobyte.Builder, content func(*cryptobyte.Builder)) {
	b.AddASN1(cbasn1.BIT_STRING, func(b *cryptobyte.Builder) {
		b.AddUint8(0) // no unused bits
		content(b)
	})
}

// addExtensions adds l's extensions in x509.CreateCertificate's order: key
// usage, extended key usage, basic constraints, authority key ID, subject
// alternative names (critical when the subject is empty). An extended key
// usage other than serverAuth and clientAuth, or a name that is not an
// IA5String, sets an error.
func (l *leafTemplate) addExtensions(b *cryptobyte.Builder, authorityKeyID []byte, subjectIsEmpty bool) {
	if l.keyUsage != 0 {
		addExtension(b, derExtKeyUsage, true, func(b *cryptobyte.Builder) { addKeyUsage(b, l.keyUsage) })
	}
	if len(l.extKeyUsage) > 0 {
		addExtension(b, derExtExtKeyUsage, false, func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				for _, u := range l.extKeyUsage {
					switch u {
					case x509.ExtKeyUsageServerAuth:
						b.AddBytes(derServerAuth)
					case x509.ExtKeyUsageClientAuth:
						b.AddBytes(derClientAuth)
					default:
						b.SetError(errors.New("unsupported extended key usage"))
					}
				}
			})
		})
	}
	b.AddBytes(derBasicConstraintsLeaf)
	if len(authorityKeyID) > 0 {
		addExtension(b, derExtAuthorityKeyID, false, func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1(cbasn1.Tag(0).ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes(authorityKeyID) })
			})
		})
	}
	if len(l.dnsNames) > 0 || len(l.ipAddresses) > 0 || len(l.uris) > 0 {
		addExtension(b, derExtSubjectAltName, subjectIsEmpty, l.addSANs)
	}
}

// addSANs adds the GeneralNames of l: DNS names, IP addresses (IPv4 in 4
// bytes), URIs, in that order.
func (l *leafTemplate) addSANs(b *cryptobyte.Builder) {
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		for _, n := range l.dnsNames {
			addIA5Name(b, sanDNS, n)
		}
		for _, ip := range l.ipAddresses {
			if v4 := ip.To4(); v4 != nil {
				ip = v4
			}
			b.AddASN1(cbasn1.Tag(sanIP).ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes(ip) })
		}
		for _, u := range l.uris {
			addIA5Name(b, sanURI, u.String())
		}
	})
}

// addIA5Name adds a GeneralName of type tag holding s, or sets an error when
// s is not ASCII.
func addIA5Name(b *cryptobyte.Builder, tag uint8, s string) {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			b.SetError(errors.New("name is not an IA5String"))
			return
		}
	}
	b.AddASN1(cbasn1.Tag(tag).ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes([]byte(s)) })
}

// addKeyUsage adds the key usage BIT STRING as x509 makes it: bit 0 first,
// trailing zero bits left out.
func addKeyUsage(b *cryptobyte.Builder, ku x509.KeyUsage) {
	a := [2]byte{bits.Reverse8(byte(ku)), bits.Reverse8(byte(ku >> 8))}
	n := 1
	if a[1] != 0 {
		n = 2
	}
	unused := 0
	if a[n-1] != 0 {
		unused = bits.TrailingZeros8(a[n-1])
	}
	b.AddASN1(cbasn1.BIT_STRING, func(b *cryptobyte.Builder) {
		b.AddUint8(uint8(unused))
		b.AddBytes(a[:n])
	})
}

// addExtension adds an Extension whose value content adds.
func addExtension(b *cryptobyte.Builder, oid []byte, critical bool, content func(*cryptobyte.Builder)) {
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddBytes(oid)
		if critical {
			b.AddASN1Boolean(true)
		}
		b.AddASN1(cbasn1.OCTET_STRING, content)
	})
}
