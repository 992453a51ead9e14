package evidencetest

import (
	"bytes"
	"crypto"
	"encoding/binary"
)

// Image is an executable of the boot chain.
type Image struct {
	// Path is the file's path: in the EFI device path of its load event
	// (slashes become backslashes) and, for files GRUB reads, the data of
	// its PCR 9 event.
	Path string
	// Content is the file's content; GRUB measures its hash into PCR 9.
	Content []byte
	// Authenticode holds, per bank, the PE image's Authenticode digest,
	// which firmware and shim measure into PCR 4 (EV_EFI_BOOT_SERVICES_
	// APPLICATION). A missing bank gets a stand-in for test content that is
	// no PE image: the hash of "authenticode:" followed by Content, which,
	// like a signed PE's Authenticode digest, differs from FileDigest.
	Authenticode map[crypto.Hash][]byte
}

// Digest returns the image's PCR 4 digest in bank: what an event-log
// verifier reports as the EFI application's digest.
func (img Image) Digest(bank crypto.Hash) []byte {
	if d, ok := img.Authenticode[bank]; ok {
		return d
	}
	return hashOf(bank, append([]byte("authenticode:"), img.Content...))
}

// FileDigest returns the hash of the image's content in bank: GRUB's PCR 9
// digest for a file it reads.
func (img Image) FileDigest(bank crypto.Hash) []byte { return hashOf(bank, img.Content) }

func (img Image) withDefaults(path string) Image {
	if img.Path == "" {
		img.Path = path
	}
	if img.Content == nil {
		img.Content = []byte("keybroker evidencetest image " + img.Path)
	}
	return img
}

// BootOpts describes the boot that Boot logs. The zero value is a UEFI
// machine with Secure Boot disabled booting shim, GRUB and Linux, logged in
// the SHA-256 bank.
type BootOpts struct {
	// Banks lists the PCR banks to log and extend. Default: SHA-256 only.
	// Extend needs every bank the TPM has allocated.
	Banks []crypto.Hash

	// SecureBoot sets the SecureBoot variable to 1 and adds the
	// EV_EFI_VARIABLE_AUTHORITY events of a verified boot: the db
	// certificate that verified shim, shim's SbatLevel, and shim's vendor
	// certificate that verified GRUB and the kernel.
	SecureBoot bool

	// PK, KEK, DB and DBX are the values of the Secure Boot variables:
	// sequences of EFI_SIGNATURE_LISTs (see SignatureListX509 and
	// SignatureListSHA256). nil takes a default: one test certificate each
	// for PK, KEK and db (Cert("keybroker test PK") and so on) and two
	// SHA-256 hashes in dbx. An empty non-nil slice logs an empty variable,
	// as firmware in setup mode does. go-eventlog parses them and rejects
	// lists other than X.509 and SHA-256 ones (and values of 28 bytes or
	// more that are no lists); values under 28 bytes read as empty.
	PK, KEK, DB, DBX []byte

	// Authority is the db certificate (DER) that verified shim, logged in
	// an EV_EFI_VARIABLE_AUTHORITY event when SecureBoot is set. Default:
	// the first X.509 certificate in DB, else Cert("keybroker test db").
	Authority []byte
	// VendorCert is shim's built-in certificate (DER) that verified GRUB
	// and the kernel. Default: Cert("keybroker test shim vendor").
	VendorCert []byte

	// Shim, Grub and Kernel are measured into PCR 4 as EFI boot services
	// applications (their Digest), and Kernel and Initrd into PCR 9 by GRUB
	// (their FileDigest). Defaults: \EFI\ubuntu\shimx64.efi,
	// \EFI\ubuntu\grubx64.efi, /boot/vmlinuz-6.8.0-keybroker and
	// /boot/initrd.img-6.8.0-keybroker, with content naming them.
	Shim, Grub, Kernel, Initrd Image

	// KernelCmdline is the kernel's arguments after its path. Default:
	// "root=/dev/sda2 ro console=ttyS0". GRUB measures
	// "kernel_cmdline: <Kernel.Path> <KernelCmdline>" NUL-terminated, so an
	// event-log verifier reports the command line as
	// Kernel.Path + " " + KernelCmdline + "\x00" (see CommandLine).
	KernelCmdline string

	// FirmwareVersion is logged UCS-2 encoded in EV_S_CRTM_VERSION.
	// Default: "keybroker test firmware 1.0".
	FirmwareVersion string
}

const (
	defaultKernelCmdline   = "root=/dev/sda2 ro console=ttyS0"
	defaultFirmwareVersion = "keybroker test firmware 1.0"
	callingEFIApplication  = "Calling EFI Application from Boot Option"
	exitBootServices       = "Exit Boot Services Invocation"
	exitBootServicesOK     = "Exit Boot Services Returned with Success"
	sbatLevel              = "sbat,1,2022111500\nshim,2\ngrub,3\n"
)

// grubPrefixes are the prefixes of GRUB's PCR 8 strings; the digest covers
// what follows the prefix, without the terminating NUL.
var grubPrefixes = []string{"grub_cmd: ", "kernel_cmdline: ", "module_cmdline: "}

func (o BootOpts) withDefaults() BootOpts {
	if len(o.Banks) == 0 {
		o.Banks = []crypto.Hash{crypto.SHA256}
	}
	if o.PK == nil {
		o.PK = SignatureListX509(Cert("keybroker test PK"))
	}
	if o.KEK == nil {
		o.KEK = SignatureListX509(Cert("keybroker test KEK"))
	}
	if o.DB == nil {
		o.DB = SignatureListX509(Cert("keybroker test db"))
	}
	if o.DBX == nil {
		revoked1 := hashOf(crypto.SHA256, []byte("keybroker test revoked image 1"))
		revoked2 := hashOf(crypto.SHA256, []byte("keybroker test revoked image 2"))
		o.DBX = SignatureListSHA256(revoked1, revoked2)
	}
	if o.Authority == nil {
		o.Authority = firstX509(o.DB)
		if o.Authority == nil {
			o.Authority = Cert("keybroker test db")
		}
	}
	if o.VendorCert == nil {
		o.VendorCert = Cert("keybroker test shim vendor")
	}
	o.Shim = o.Shim.withDefaults(`\EFI\ubuntu\shimx64.efi`)
	o.Grub = o.Grub.withDefaults(`\EFI\ubuntu\grubx64.efi`)
	o.Kernel = o.Kernel.withDefaults("/boot/vmlinuz-6.8.0-keybroker")
	o.Initrd = o.Initrd.withDefaults("/boot/initrd.img-6.8.0-keybroker")
	if o.KernelCmdline == "" {
		o.KernelCmdline = defaultKernelCmdline
	}
	if o.FirmwareVersion == "" {
		o.FirmwareVersion = defaultFirmwareVersion
	}
	return o
}

// CommandLine returns the kernel command line that go-eventlog's GRUB
// extraction reports for a log from Boot(opts): the kernel's path, a space,
// the arguments, and the NUL that GRUB logs at the end of its strings.
func CommandLine(opts BootOpts) string {
	o := opts.withDefaults()
	return o.Kernel.Path + " " + o.KernelCmdline + "\x00"
}

// builder appends events with every bank's digest filled in.
type builder struct {
	banks  []crypto.Hash
	events []Event
}

// add appends an event whose digest derive computes from its data.
func (b *builder) add(pcr, typ uint32, data []byte, derive func([]byte, crypto.Hash) []byte) {
	e := Event{PCR: pcr, Type: typ, Data: data, Digests: map[crypto.Hash][]byte{}, derive: derive}
	for _, bank := range b.banks {
		e.Digests[bank] = derive(data, bank)
	}
	b.events = append(b.events, e)
}

// data appends an event whose digest is the hash of its data.
func (b *builder) data(pcr, typ uint32, data []byte) { b.add(pcr, typ, data, digestOfData) }

// external appends an event whose digest covers something not in the log.
func (b *builder) external(pcr, typ uint32, data []byte, digest func(crypto.Hash) []byte) {
	e := Event{PCR: pcr, Type: typ, Data: data, Digests: map[crypto.Hash][]byte{}}
	for _, bank := range b.banks {
		e.Digests[bank] = digest(bank)
	}
	b.events = append(b.events, e)
}

func digestOfData(data []byte, bank crypto.Hash) []byte { return hashOf(bank, data) }

// digestOfGRUBString hashes a GRUB PCR 8 string: what follows the prefix,
// without the terminating NUL.
func digestOfGRUBString(data []byte, bank crypto.Hash) []byte {
	s := bytes.TrimSuffix(data, []byte{0})
	for _, p := range grubPrefixes {
		if bytes.HasPrefix(s, []byte(p)) {
			s = s[len(p):]
			break
		}
	}
	return hashOf(bank, s)
}

// digestOfVariableValue hashes the value of a UEFI_VARIABLE_DATA, as EDK2
// does for EV_EFI_VARIABLE_BOOT (PCR 1), unlike PCR 7's variables, whose
// digest covers the whole structure.
func digestOfVariableValue(data []byte, bank crypto.Hash) []byte {
	if v, ok := variablePayload(data); ok {
		return hashOf(bank, v)
	}
	return hashOf(bank, data)
}

func (b *builder) separator(pcr uint32) { b.data(pcr, EvSeparator, []byte{0, 0, 0, 0}) }

func (b *builder) grubString(prefix, s string) {
	b.add(8, EvIPL, []byte(prefix+s+"\x00"), digestOfGRUBString)
}

func (b *builder) grubFile(path string, content []byte) {
	b.external(9, EvIPL, []byte(path+"\x00"), func(bank crypto.Hash) []byte { return hashOf(bank, content) })
}

func (b *builder) application(img Image, addr uint64, devicePath []byte) {
	data := imageLoadEvent(addr, uint64(len(img.Content)), devicePath)
	b.external(4, EvEFIBootServicesApplication, data, img.Digest)
}

// Boot logs a UEFI boot of shim, GRUB and Linux the way OVMF (EDK2), shim 15
// and GRUB 2.06+ measure it, in this order:
//
//	PCR 0  EV_NO_ACTION StartupLocality (locality 0; zero digests, not extended)
//	PCR 0  EV_S_CRTM_VERSION            FirmwareVersion in UCS-2
//	PCR 0  EV_POST_CODE "POST CODE"     digest of the firmware code
//	PCR 0  EV_EFI_PLATFORM_FIRMWARE_BLOB digest of the DXE firmware volume
//	PCR 7  EV_EFI_VARIABLE_DRIVER_CONFIG SecureBoot, PK, KEK, db, dbx
//	PCR 7  EV_SEPARATOR
//	PCR 1  EV_EFI_HANDOFF_TABLES        digest of the SMBIOS table
//	PCR 1  EV_EFI_VARIABLE_BOOT         BootOrder, Boot0001 (digest of the value)
//	PCR 4  EV_EFI_ACTION "Calling EFI Application from Boot Option"
//	PCR 0–6 EV_SEPARATOR
//	PCR 5  EV_EFI_GPT_EVENT             the boot disk's GPT
//	PCR 4  EV_EFI_BOOT_SERVICES_APPLICATION shim (digest: Shim.Digest)
//	PCR 7  EV_EFI_VARIABLE_AUTHORITY    db: Authority            (SecureBoot)
//	PCR 7  EV_EFI_VARIABLE_AUTHORITY    SbatLevel (shim)         (SecureBoot)
//	PCR 14 EV_IPL                       MokList, MokListX, MokListTrusted (shim)
//	PCR 4  EV_EFI_BOOT_SERVICES_APPLICATION GRUB
//	PCR 7  EV_EFI_VARIABLE_AUTHORITY    Shim: VendorCert         (SecureBoot)
//	PCR 9  EV_IPL /boot/grub/grub.cfg   digest of the file
//	PCR 8  EV_IPL "grub_cmd: set root=..." and "grub_cmd: linux <kernel> <args>"
//	PCR 9  EV_IPL <Kernel.Path>         digest of the file
//	PCR 8  EV_IPL "kernel_cmdline: <kernel> <args>"
//	PCR 8  EV_IPL "grub_cmd: initrd <initrd>", PCR 9 EV_IPL <Initrd.Path>
//	PCR 4  EV_EFI_BOOT_SERVICES_APPLICATION the kernel
//	PCR 5  EV_EFI_ACTION "Exit Boot Services Invocation", "... Returned with Success"
//
// GRUB's strings are NUL-terminated with digests of the text after the
// prefix; PCR 7 variables, separators and EFI actions have digests of their
// data. The result is deterministic: the same opts give the same log.
// Boot panics if opts.Banks holds a hash other than SHA-1/256/384/512.
func Boot(opts BootOpts) *Log {
	o := opts.withDefaults()
	for _, bank := range o.Banks {
		algID(bank)
	}
	b := &builder{banks: o.Banks}
	fwCode := []byte("keybroker evidencetest firmware code " + o.FirmwareVersion)
	dxeFV := []byte("keybroker evidencetest DXE firmware volume " + o.FirmwareVersion)
	smbios := []byte("keybroker evidencetest SMBIOS 3.0 table " + o.FirmwareVersion)

	// Platform firmware (PCR 0).
	b.events = append(b.events, Event{PCR: 0, Type: EvNoAction, Data: startupLocality(0)})
	b.data(0, EvSCRTMVersion, ucs2z(o.FirmwareVersion))
	b.external(0, EvPostCode, []byte("POST CODE"), func(bank crypto.Hash) []byte { return hashOf(bank, fwCode) })
	b.external(0, EvEFIPlatformFirmwareBlob, platformFirmwareBlob(0xffc84000, uint64(len(dxeFV))),
		func(bank crypto.Hash) []byte { return hashOf(bank, dxeFV) })

	// Secure Boot policy (PCR 7), then its separator, as EDK2 measures them
	// when the variable services become available.
	sb := []byte{0}
	if o.SecureBoot {
		sb = []byte{1}
	}
	b.data(7, EvEFIVariableDriverConfig, variableData(efiGlobalVariable, "SecureBoot", sb))
	b.data(7, EvEFIVariableDriverConfig, variableData(efiGlobalVariable, "PK", o.PK))
	b.data(7, EvEFIVariableDriverConfig, variableData(efiGlobalVariable, "KEK", o.KEK))
	b.data(7, EvEFIVariableDriverConfig, variableData(efiImageSecurityDatabase, "db", o.DB))
	b.data(7, EvEFIVariableDriverConfig, variableData(efiImageSecurityDatabase, "dbx", o.DBX))
	b.separator(7)

	// Platform configuration (PCR 1).
	b.external(1, EvEFIHandoffTables, handoffTables(smbios3TableGUID, 0x7f6a3000),
		func(bank crypto.Hash) []byte { return hashOf(bank, smbios) })
	shimPath := diskDevicePath(1, o.Shim.Path)
	b.add(1, EvEFIVariableBoot, variableData(efiGlobalVariable, "BootOrder", binary.LittleEndian.AppendUint16(nil, 1)), digestOfVariableValue)
	b.add(1, EvEFIVariableBoot, variableData(efiGlobalVariable, "Boot0001", loadOption("ubuntu", shimPath)), digestOfVariableValue)

	// Ready to boot: the boot manager calls the boot option.
	b.data(4, EvEFIAction, []byte(callingEFIApplication))
	for pcr := uint32(0); pcr < 7; pcr++ {
		b.separator(pcr)
	}
	b.data(5, EvEFIGPTEvent, gptEvent())

	// shim, loaded and verified by firmware.
	b.application(o.Shim, 0x7e1a9018, shimPath)
	if o.SecureBoot {
		b.data(7, EvEFIVariableAuthority, variableData(efiImageSecurityDatabase, "db", signatureData(o.Authority)))
		b.data(7, EvEFIVariableAuthority, variableData(shimLockGUID, "SbatLevel", []byte(sbatLevel)))
	}
	mokList := SignatureListX509(o.VendorCert)
	b.external(14, EvIPL, []byte("MokList\x00"), func(bank crypto.Hash) []byte { return hashOf(bank, mokList) })
	b.external(14, EvIPL, []byte("MokListX\x00"), func(bank crypto.Hash) []byte { return hashOf(bank, nil) })
	b.external(14, EvIPL, []byte("MokListTrusted\x00"), func(bank crypto.Hash) []byte { return hashOf(bank, []byte{1}) })

	// GRUB, loaded and verified by shim.
	b.application(o.Grub, 0x7d8b5018, diskDevicePath(1, o.Grub.Path))
	if o.SecureBoot {
		// shim logs its vendor certificate as bare DER, without the
		// EFI_SIGNATURE_DATA owner GUID.
		b.data(7, EvEFIVariableAuthority, variableData(shimLockGUID, "Shim", o.VendorCert))
	}
	linux := "linux " + o.Kernel.Path + " " + o.KernelCmdline
	initrd := "initrd " + o.Initrd.Path
	grubCfg := []byte("set root='hd0,gpt2'\nmenuentry 'Linux' {\n\t" + linux + "\n\t" + initrd + "\n}\n")
	b.grubFile("/boot/grub/grub.cfg", grubCfg)
	b.grubString("grub_cmd: ", "set root=hd0,gpt2")
	b.grubString("grub_cmd: ", linux)
	b.grubFile(o.Kernel.Path, o.Kernel.Content)
	b.grubString("kernel_cmdline: ", o.Kernel.Path+" "+o.KernelCmdline)
	b.grubString("grub_cmd: ", initrd)
	b.grubFile(o.Initrd.Path, o.Initrd.Content)

	// The kernel, started by GRUB through the firmware's image services.
	b.application(o.Kernel, 0x7c000000, diskDevicePath(2, o.Kernel.Path))
	b.data(5, EvEFIAction, []byte(exitBootServices))
	b.data(5, EvEFIAction, []byte(exitBootServicesOK))

	return &Log{Banks: o.Banks, Events: b.events}
}
