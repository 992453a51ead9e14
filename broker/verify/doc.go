// Package verify checks what a node presents: that its EK is trusted, that its
// AK is a restricted signing key resident in a TPM, and that its quotes are
// fresh, signed by that AK and consistent with the reported PCR values.
//
// The result of a successful verification is a *Verified, which only this
// package can construct; policies evaluate nothing else, so unverified data
// cannot reach a decision. This package never opens a TPM.
//
// Every check takes the one Opts (trusted EKs, SHA-1, banks) built from the
// configuration. A typical broker calls Node when a challenge is requested
// and again when it is answered, then Quotes with the consumed challenge:
//
//	node, err := verify.Node(ekPub, ekCert, intermediates, akPub, opts)
//	...
//	v, err := verify.Quotes(node, secretHash, quotes, opts)
//	...
//	v, err = v.WithEventLog(eventLog)   // event-log facts, if the node sent one
//	v, err = v.WithHistory(prevClock)   // TPM counters against the last attestation
//
// WithEventLog and WithHistory return a copy carrying more facts; each
// refuses what does not add up, naming its check. WithEventLog binds the log
// by replaying it (package tcglog) and then only interprets it: a log that
// replays is never refused for what cannot be interpreted, which its facts'
// Problems name instead. FromTPM tells a refusal
// of evidence the node's TPM produced for the challenge (a quote carrying
// the activated secret verified first) from one anyone could cause with a
// node's public EK; the broker deny-lists a node only for the former.
package verify
