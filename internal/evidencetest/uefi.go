package evidencetest

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash/crc32"
	"math/big"
	"strings"
	"time"
	"unicode/utf16"
)

// GUIDs from the UEFI specification and shim, and our own for test data.
var (
	efiGlobalVariable        = mustGUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")
	efiImageSecurityDatabase = mustGUID("d719b2cb-3d3a-4596-a3bc-dad00e67656f")
	efiCertX509GUID          = mustGUID("a5c059a1-94e4-4aa7-87b5-ab155c2bf072")
	efiCertSHA256GUID        = mustGUID("c1c41626-504c-4092-aca9-41f936934328")
	shimLockGUID             = mustGUID("605dab50-e046-4300-abb6-3dd810dd8b23")
	smbios3TableGUID         = mustGUID("f2fd1544-9794-4a2c-992e-e5bbcf20e394")
	gptESPType               = mustGUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
	gptLinuxFilesystemType   = mustGUID("0fc63daf-8483-4772-8e79-3d69d8477de4")
	testDiskGUID             = mustGUID("6b657962-726f-6b65-7200-000000000001")
	testESPGUID              = mustGUID("6b657962-726f-6b65-7200-000000000002")
	testRootGUID             = mustGUID("6b657962-726f-6b65-7200-000000000003")
	testSignatureOwner       = mustGUID("6b657962-726f-6b65-7200-0000000000ff")
)

// The test disk: 1 GiB of 512-byte sectors with an EFI system partition and
// a root filesystem.
const (
	testDiskSectors uint64 = 1 << 21
	espFirstLBA     uint64 = 2048
	espLastLBA      uint64 = 206847
	rootFirstLBA           = espLastLBA + 1
	rootLastLBA            = testDiskSectors - 34
)

// mustGUID encodes a GUID in its textual form into the mixed-endian EFI_GUID
// layout: Data1 (uint32), Data2 and Data3 (uint16) little-endian, Data4 as
// bytes. It panics on a malformed constant.
func mustGUID(s string) [16]byte {
	raw, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	if err != nil || len(raw) != 16 {
		panic("evidencetest: malformed GUID " + s)
	}
	var g [16]byte
	binary.LittleEndian.PutUint32(g[0:], binary.BigEndian.Uint32(raw[0:]))
	binary.LittleEndian.PutUint16(g[4:], binary.BigEndian.Uint16(raw[4:]))
	binary.LittleEndian.PutUint16(g[6:], binary.BigEndian.Uint16(raw[6:]))
	copy(g[8:], raw[8:])
	return g
}

// UCS2 encodes s as UEFI's UCS-2 (UTF-16LE) without a terminating NUL.
func UCS2(s string) []byte {
	var b []byte
	for _, u := range utf16.Encode([]rune(s)) {
		b = binary.LittleEndian.AppendUint16(b, u)
	}
	return b
}

// ucs2z encodes s as UCS-2 with a terminating NUL character.
func ucs2z(s string) []byte { return append(UCS2(s), 0, 0) }

// variableData encodes a UEFI_VARIABLE_DATA structure (TCG PC Client PFP,
// the event data of EV_EFI_VARIABLE_* events): VariableName GUID,
// UnicodeNameLength and VariableDataLength as UINT64 (counts of characters and
// bytes, the name without a NUL), the UCS-2 name, then the variable's data.
func variableData(vendor [16]byte, name string, data []byte) []byte {
	n := UCS2(name)
	b := append([]byte(nil), vendor[:]...)
	b = binary.LittleEndian.AppendUint64(b, uint64(len(n)/2))
	b = binary.LittleEndian.AppendUint64(b, uint64(len(data)))
	b = append(b, n...)
	return append(b, data...)
}

// variablePayload returns the VariableData part of a UEFI_VARIABLE_DATA
// structure, or false if data is not one.
func variablePayload(data []byte) ([]byte, bool) {
	if len(data) < 32 {
		return nil, false
	}
	nameLen := binary.LittleEndian.Uint64(data[16:])
	dataLen := binary.LittleEndian.Uint64(data[24:])
	rest := uint64(len(data) - 32)
	if nameLen > rest/2 || dataLen != rest-2*nameLen {
		return nil, false
	}
	return data[32+2*nameLen:], true
}

// SignatureListX509 encodes certificates (DER) as EFI_SIGNATURE_LISTs of type
// EFI_CERT_X509_GUID, one list per certificate because each list holds
// signatures of one size, as the contents of PK, KEK, db or dbx.
func SignatureListX509(certs ...[]byte) []byte {
	var b []byte
	for _, c := range certs {
		b = appendSignatureList(b, efiCertX509GUID, len(c), c)
	}
	return b
}

// SignatureListSHA256 encodes SHA-256 digests (of PE images, in Authenticode
// form) as one EFI_SIGNATURE_LIST of type EFI_CERT_SHA256_GUID.
func SignatureListSHA256(digests ...[]byte) []byte {
	if len(digests) == 0 {
		return nil
	}
	return appendSignatureList(nil, efiCertSHA256GUID, sha256.Size, digests...)
}

// appendSignatureList appends an EFI_SIGNATURE_LIST: SignatureType,
// SignatureListSize, SignatureHeaderSize (0) and SignatureSize, then one
// EFI_SIGNATURE_DATA (owner GUID + data) per entry.
func appendSignatureList(b []byte, typ [16]byte, size int, entries ...[]byte) []byte {
	sigSize := 16 + size
	b = append(b, typ[:]...)
	b = binary.LittleEndian.AppendUint32(b, uint32(28+len(entries)*sigSize))
	b = binary.LittleEndian.AppendUint32(b, 0)
	b = binary.LittleEndian.AppendUint32(b, uint32(sigSize))
	for _, e := range entries {
		b = append(b, testSignatureOwner[:]...)
		b = append(b, e...)
	}
	return b
}

// firstX509 returns the first certificate in a sequence of
// EFI_SIGNATURE_LISTs, or nil.
func firstX509(lists []byte) []byte {
	for len(lists) >= 28 {
		var typ [16]byte
		copy(typ[:], lists)
		listSize := binary.LittleEndian.Uint32(lists[16:])
		hdrSize := binary.LittleEndian.Uint32(lists[20:])
		sigSize := binary.LittleEndian.Uint32(lists[24:])
		if listSize < 28 || uint64(listSize) > uint64(len(lists)) {
			return nil
		}
		start := 28 + uint64(hdrSize)
		if typ == efiCertX509GUID && sigSize > 16 && start+uint64(sigSize) <= uint64(listSize) {
			return lists[start+16 : start+uint64(sigSize)]
		}
		lists = lists[listSize:]
	}
	return nil
}

// signatureData encodes one EFI_SIGNATURE_DATA: the owner GUID, then the
// certificate. It is the VariableData of an EV_EFI_VARIABLE_AUTHORITY event
// for a certificate from db.
func signatureData(cert []byte) []byte {
	return append(append([]byte(nil), testSignatureOwner[:]...), cert...)
}

// Cert returns a self-signed Ed25519 certificate (DER) whose subject is
// commonName. The key derives from commonName and the signature is
// deterministic, so the same name always yields the same bytes: stable PCR 7
// values across runs. Insecure by construction; for tests only.
func Cert(commonName string) []byte {
	seed := sha256.Sum256([]byte("keybroker evidencetest key: " + commonName))
	key := ed25519.NewKeyFromSeed(seed[:])
	serial := new(big.Int).SetBytes(seed[:8])
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"keybroker test"}},
		NotBefore:             time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:              time.Date(2049, 12, 31, 23, 59, 59, 0, time.UTC),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(nil, tmpl, tmpl, key.Public(), key)
	if err != nil {
		panic(fmt.Sprintf("evidencetest: unable to create the test certificate %q: %v", commonName, err))
	}
	return der
}

// Device paths (UEFI specification, "Device Path Protocol").

func devicePathNode(typ, subtype byte, data []byte) []byte {
	b := []byte{typ, subtype}
	b = binary.LittleEndian.AppendUint16(b, uint16(4+len(data)))
	return append(b, data...)
}

// diskDevicePath is PciRoot(0x0)/Pci(0x4,0x0)/HD(n,GPT,<GUID>,...) — the
// boot disk's EFI system partition (n=1) or root filesystem (n=2) — followed
// by file when it is not empty.
func diskDevicePath(partition uint32, file string) []byte {
	var acpi []byte
	acpi = binary.LittleEndian.AppendUint32(acpi, 0x0a0341d0) // EISA "PNP0A03"
	acpi = binary.LittleEndian.AppendUint32(acpi, 0)
	var hd []byte
	first, last, id := espFirstLBA, espLastLBA, testESPGUID
	if partition == 2 {
		first, last, id = rootFirstLBA, rootLastLBA, testRootGUID
	}
	hd = binary.LittleEndian.AppendUint32(hd, partition)
	hd = binary.LittleEndian.AppendUint64(hd, first)
	hd = binary.LittleEndian.AppendUint64(hd, last-first+1)
	hd = append(hd, id[:]...)
	hd = append(hd, 2, 2) // MBRType: GPT; SignatureType: GUID
	var b []byte
	b = append(b, devicePathNode(0x02, 0x01, acpi)...)         // ACPI
	b = append(b, devicePathNode(0x01, 0x01, []byte{0, 4})...) // PCI function 0, device 4
	b = append(b, devicePathNode(0x04, 0x01, hd)...)           // media: hard drive
	if file != "" {
		b = append(b, devicePathNode(0x04, 0x04, ucs2z(strings.ReplaceAll(file, "/", `\`)))...) // media: file path
	}
	return append(b, devicePathNode(0x7f, 0xff, nil)...) // end of the whole path
}

// imageLoadEvent encodes a UEFI_IMAGE_LOAD_EVENT: ImageLocationInMemory,
// ImageLengthInMemory, ImageLinkTimeAddress, LengthOfDevicePath (all UINT64),
// then the device path.
func imageLoadEvent(addr, length uint64, devicePath []byte) []byte {
	var b []byte
	b = binary.LittleEndian.AppendUint64(b, addr)
	b = binary.LittleEndian.AppendUint64(b, length)
	b = binary.LittleEndian.AppendUint64(b, 0)
	b = binary.LittleEndian.AppendUint64(b, uint64(len(devicePath)))
	return append(b, devicePath...)
}

// loadOption encodes an EFI_LOAD_OPTION (the value of a Boot#### variable).
func loadOption(description string, devicePath []byte) []byte {
	var b []byte
	b = binary.LittleEndian.AppendUint32(b, 1) // LOAD_OPTION_ACTIVE
	b = binary.LittleEndian.AppendUint16(b, uint16(len(devicePath)))
	b = append(b, ucs2z(description)...)
	return append(b, devicePath...)
}

// platformFirmwareBlob encodes a UEFI_PLATFORM_FIRMWARE_BLOB: base and length.
func platformFirmwareBlob(base, length uint64) []byte {
	b := binary.LittleEndian.AppendUint64(nil, base)
	return binary.LittleEndian.AppendUint64(b, length)
}

// handoffTables encodes UEFI_HANDOFF_TABLE_POINTERS with one table.
func handoffTables(vendor [16]byte, addr uint64) []byte {
	b := binary.LittleEndian.AppendUint64(nil, 1)
	b = append(b, vendor[:]...)
	return binary.LittleEndian.AppendUint64(b, addr)
}

// gptEvent encodes UEFI_GPT_DATA for the test disk: the
// UEFI_PARTITION_TABLE_HEADER (with valid CRCs), the number of partitions and
// the two used entries (ESP and root filesystem) of the 128-entry array.
func gptEvent() []byte {
	const entries, entrySize = 128, 128
	entry := func(typ, id [16]byte, first, last uint64, name string) []byte {
		e := make([]byte, entrySize)
		copy(e[0:], typ[:])
		copy(e[16:], id[:])
		binary.LittleEndian.PutUint64(e[32:], first)
		binary.LittleEndian.PutUint64(e[40:], last)
		copy(e[56:], UCS2(name))
		return e
	}
	used := [][]byte{
		entry(gptESPType, testESPGUID, espFirstLBA, espLastLBA, "EFI System Partition"),
		entry(gptLinuxFilesystemType, testRootGUID, rootFirstLBA, rootLastLBA, "root"),
	}
	array := make([]byte, entries*entrySize)
	for i, e := range used {
		copy(array[i*entrySize:], e)
	}
	hdr := make([]byte, 92)
	copy(hdr, "EFI PART")
	binary.LittleEndian.PutUint32(hdr[8:], 0x00010000)
	binary.LittleEndian.PutUint32(hdr[12:], 92)
	binary.LittleEndian.PutUint64(hdr[24:], 1)
	binary.LittleEndian.PutUint64(hdr[32:], testDiskSectors-1)
	binary.LittleEndian.PutUint64(hdr[40:], 34)
	binary.LittleEndian.PutUint64(hdr[48:], testDiskSectors-34)
	copy(hdr[56:], testDiskGUID[:])
	binary.LittleEndian.PutUint64(hdr[72:], 2)
	binary.LittleEndian.PutUint32(hdr[80:], entries)
	binary.LittleEndian.PutUint32(hdr[84:], entrySize)
	binary.LittleEndian.PutUint32(hdr[88:], crc32.ChecksumIEEE(array))
	binary.LittleEndian.PutUint32(hdr[16:], crc32.ChecksumIEEE(hdr))

	b := bytes.Clone(hdr)
	b = binary.LittleEndian.AppendUint64(b, uint64(len(used)))
	for _, e := range used {
		b = append(b, e...)
	}
	return b
}

// startupLocality encodes the TCG_EfiStartupLocalityEvent: the signature
// "StartupLocality\0" and the locality from which TPM2_Startup was sent.
func startupLocality(locality byte) []byte {
	return append([]byte("StartupLocality\x00"), locality)
}
