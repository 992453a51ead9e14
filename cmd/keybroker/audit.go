package main

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/keybroker/keybroker/idlog"
	"github.com/keybroker/keybroker/internal/cli"
)

const auditShowLong = `Prints the node's record of issued identities as its last verified
attestation carried it: every SVID its agent's Workload API handed to a
workload in that boot (X.509 serial or JWT digest, SPIFFE ID, the entry's
selectors, the caller's executable SHA-256 and uid), after the record
replayed to the quoted PCR (docs/identities.md). The broker keeps only
verified evidence, so what is printed is what was verified; handouts after
that attestation appear with the next one. The records of earlier boots the
broker keeps (newest first, 256 KiB in all) follow, each with the receipt of
the attestation that verified it. --json prints the record as
JSON. With --vault-mount it reads the node the Vault auth method mounted
there keeps.`

type auditShowOpts struct {
	storeFlags
	vault  vaultFlags
	ekHash string
	asJSON bool
}

func auditShowCmd() *cobra.Command {
	var o auditShowOpts
	cmd := &cobra.Command{
		Use:   "show (--config broker.hcl | --data-dir DIR | --vault-mount auth/tpm) --node EKHASH",
		Short: "Print a node's verified record of issued identities",
		Long:  auditShowLong,
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var p cli.Problems
			o.checkWith(&p, &o.vault)
			p.Required(cmd, "node")
			if err := p.Err(); err != nil {
				return err
			}
			return cli.Code(auditShow(o, cmd.OutOrStdout(), cmd.ErrOrStderr()))
		},
	}
	o.add(cmd)
	o.vault.add(cmd)
	f := cmd.Flags()
	f.StringVar(&o.ekHash, "node", "", "the node's EK hash, or a unique prefix of at least 8 hex digits (required)")
	f.BoolVar(&o.asJSON, "json", false, "print the record as JSON")
	return cmd
}

// noCurrentRecord says that the node's last attestation carried no record.
const noCurrentRecord = "its last verified attestation carried no record of issued identities (agent run without --identity-log-dir?)"

// auditRecord is what audit show prints with --json.
type auditRecord struct {
	EKHash     string    `json:"ek_hash"`
	AttestedAt time.Time `json:"attested_at"`
	// Current reports that the last attestation carried a record (the
	// boot fields below); earlier boots are printed either way.
	Current bool `json:"current"`
	auditBoot
	// Earlier are the records of earlier boots the broker keeps, newest
	// first.
	Earlier []auditBoot `json:"earlier_boots,omitempty"`
}

// auditBoot is one boot's record and the receipt of the attestation that
// verified it.
type auditBoot struct {
	ReceiptID string         `json:"receipt_id,omitempty"`
	PCR       int            `json:"pcr"`
	BootID    string         `json:"boot_id,omitempty"`
	Issued    []idlog.Issued `json:"issued"`
	// Dropped and DroppedSHA256 are set on the oldest earlier boot kept:
	// how many older records the broker no longer keeps, and the SHA-256
	// chain over them (store.IdentityLog).
	Dropped       uint64 `json:"dropped,omitempty"`
	DroppedSHA256 string `json:"dropped_sha256,omitempty"`
}

// bootOf parses a stored record.
func bootOf(receipt string, raw []byte) (auditBoot, error) {
	l, err := idlog.Parse(raw)
	if err != nil {
		return auditBoot{}, err
	}
	b := auditBoot{ReceiptID: receipt, PCR: l.PCR, BootID: l.BootID, Issued: l.Issued}
	if b.Issued == nil {
		b.Issued = []idlog.Issued{}
	}
	return b, nil
}

func auditShow(o auditShowOpts, stdout, stderr io.Writer) int {
	n, ok := nodeStatus("audit", o.storeFlags, o.vault, o.ekHash, true, stderr)
	if !ok {
		return 1
	}
	current := n.Evidence != nil && len(n.Evidence.IdentityLog) > 0
	if !current && len(n.EarlierIdentityLogs) == 0 {
		fmt.Fprintf(stderr, "audit: node %s: %s\n", n.EKHash, noCurrentRecord)
		return 1
	}
	rec := auditRecord{EKHash: n.EKHash, Current: current, auditBoot: auditBoot{Issued: []idlog.Issued{}}}
	if n.Evidence != nil {
		rec.AttestedAt = n.Evidence.Time
	}
	if current {
		var err error
		if rec.auditBoot, err = bootOf(n.LastReceiptID, n.Evidence.IdentityLog); err != nil {
			fmt.Fprintf(stderr, "audit: node %s: the stored record does not parse: %v\n", n.EKHash, err)
			return 1
		}
	}
	for _, e := range n.EarlierIdentityLogs {
		b, err := bootOf(e.ReceiptID, e.Log)
		if err != nil {
			fmt.Fprintf(stderr, "audit: node %s: the stored record of receipt %s does not parse: %v\n", n.EKHash, e.ReceiptID, err)
			return 1
		}
		b.Dropped, b.DroppedSHA256 = e.Dropped, hex.EncodeToString(e.DroppedSHA256)
		rec.Earlier = append(rec.Earlier, b)
	}
	if o.asJSON {
		b, err := json.MarshalIndent(rec, "", "  ")
		if err != nil {
			fmt.Fprintf(stderr, "audit: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "%s\n", b)
		return 0
	}
	if current {
		fmt.Fprintf(stdout, "node %s: %d identities issued in boot %s (sha256 PCR %d), verified at %s, receipt %s\n",
			rec.EKHash, len(rec.Issued), orDash(rec.BootID), rec.PCR, rfc3339(rec.AttestedAt), orDash(rec.ReceiptID))
		printIssued(stdout, rec.Issued)
	} else {
		fmt.Fprintf(stdout, "node %s: %s\n", rec.EKHash, noCurrentRecord)
	}
	for _, b := range rec.Earlier {
		fmt.Fprintf(stdout, "\nearlier boot %s: %d identities issued (sha256 PCR %d), verified by receipt %s\n",
			orDash(b.BootID), len(b.Issued), b.PCR, orDash(b.ReceiptID))
		printIssued(stdout, b.Issued)
		if b.Dropped > 0 {
			fmt.Fprintf(stdout, "\n%d older boots' records no longer kept; sha256 chain over them: %s\n", b.Dropped, b.DroppedSHA256)
		}
	}
	return 0
}

func printIssued(w io.Writer, issued []idlog.Issued) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tTYPE\tSPIFFE ID\tSERIAL\tUID\tEXE SHA256\tSELECTORS")
	for _, i := range issued {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", rfc3339(i.Time), i.Type, i.SPIFFEID, i.Serial, i.UID, orDash(i.ExeSHA256), strings.Join(i.Selectors, ","))
	}
	tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
