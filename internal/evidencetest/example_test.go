package evidencetest_test

import (
	"crypto"
	"fmt"
	"log"

	"github.com/google/go-eventlog/extract"
	pb "github.com/google/go-eventlog/proto/state"
	"github.com/google/go-eventlog/register"
	"github.com/google/go-eventlog/tpmeventlog"
	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm-tools/simulator"
	"github.com/google/go-tpm/legacy/tpm2"
	"github.com/keybroker/keybroker/internal/evidencetest"
)

// sha256Bank reads all 24 SHA-256 PCRs in go-eventlog's form.
func sha256Bank(sim *simulator.Simulator) register.PCRBank {
	sel := tpm2.PCRSelection{Hash: tpm2.AlgSHA256}
	for i := range 24 {
		sel.PCRs = append(sel.PCRs, i)
	}
	pcrs, err := client.ReadPCRs(sim, sel)
	if err != nil {
		log.Fatal(err)
	}
	bank := register.PCRBank{TCGHashAlgo: pb.HashAlgo_SHA256}
	for i := range uint32(24) {
		bank.PCRs = append(bank.PCRs, register.PCR{Index: int(i), Digest: pcrs.GetPcrs()[i], DigestAlg: crypto.SHA256})
	}
	return bank
}

// A measured boot into the simulator, verified with go-eventlog.
func Example() {
	sim, err := simulator.Get()
	if err != nil {
		log.Fatal(err)
	}
	defer sim.Close()

	banks, err := evidencetest.AllocatedBanks(sim)
	if err != nil {
		log.Fatal(err)
	}
	l := evidencetest.Boot(evidencetest.BootOpts{Banks: banks, SecureBoot: true, KernelCmdline: "root=/dev/vda1 ro"})
	if err := l.Extend(sim); err != nil {
		log.Fatal(err)
	}

	st, err := tpmeventlog.ReplayAndExtract(l.Bytes(), sha256Bank(sim), extract.Opts{Loader: extract.GRUB})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("secure boot:", st.GetSecureBoot().GetEnabled())
	fmt.Println("EFI applications:", len(st.GetEfi().GetApps()))
	fmt.Printf("kernel command line: %q\n", st.GetLinuxKernel().GetCommandLine())
	// Output:
	// secure boot: true
	// EFI applications: 3
	// kernel command line: "/boot/vmlinuz-6.8.0-keybroker root=/dev/vda1 ro\x00"
}

// A log that claims another kernel command line than the TPM measured.
func ExampleLog_EditEvent() {
	sim, err := simulator.Get()
	if err != nil {
		log.Fatal(err)
	}
	defer sim.Close()

	banks, err := evidencetest.AllocatedBanks(sim)
	if err != nil {
		log.Fatal(err)
	}
	l := evidencetest.Boot(evidencetest.BootOpts{Banks: banks, KernelCmdline: "root=/dev/vda1 ro init=/bin/sh"})
	if err := l.Extend(sim); err != nil {
		log.Fatal(err)
	}
	i := l.Find(8, evidencetest.EvIPL, []byte("kernel_cmdline: "))[0]
	forged := l.EditEvent(i, []byte("kernel_cmdline: /boot/vmlinuz-6.8.0-keybroker root=/dev/vda1 ro\x00"))

	_, err = tpmeventlog.ReplayAndExtract(forged.Bytes(), sha256Bank(sim), extract.Opts{Loader: extract.GRUB})
	fmt.Println(err)
	// Output:
	// failed to replay event log: event log failed to verify: the following registers failed to replay: [8]
}

// Secure Boot databases are EFI signature lists.
func ExampleBoot() {
	l := evidencetest.Boot(evidencetest.BootOpts{
		SecureBoot: true,
		DB:         evidencetest.SignatureListX509(evidencetest.Cert("my db")),
		DBX:        evidencetest.SignatureListSHA256(make([]byte, 32)),
	})
	// Without a TPM, replay against the values the log itself replays to.
	bank := register.PCRBank{TCGHashAlgo: pb.HashAlgo_SHA256}
	for i, v := range l.PCRs(crypto.SHA256) {
		bank.PCRs = append(bank.PCRs, register.PCR{Index: int(i), Digest: v, DigestAlg: crypto.SHA256})
	}
	st, err := tpmeventlog.ReplayAndExtract(l.Bytes(), bank, extract.Opts{Loader: extract.GRUB})
	if err != nil {
		log.Fatal(err)
	}
	db := st.GetSecureBoot().GetDb().GetCerts()[0].GetDer()
	authority := st.GetSecureBoot().GetAuthority().GetCerts()[0].GetDer()
	fmt.Println("db cert verified shim:", string(db) == string(evidencetest.Cert("my db")) && string(authority) == string(db))
	fmt.Println("dbx hashes:", len(st.GetSecureBoot().GetDbx().GetHashes()))
	// Output:
	// db cert verified shim: true
	// dbx hashes: 1
}
