package provenance

import (
	"slices"

	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// ToProto converts trust material for an AttestResponse; nil when m is
// empty.
func (m Material) ToProto() *pb.WorkloadTrust {
	if len(m.Keys)+len(m.Roots) == 0 {
		return nil
	}
	out := &pb.WorkloadTrust{}
	for _, k := range m.Keys {
		out.Signers = append(out.Signers, &pb.WorkloadSigner{Name: k.Name, PublicKey: slices.Clone(k.DER)})
	}
	for _, r := range m.Roots {
		out.TrustedRoots = append(out.TrustedRoots, &pb.WorkloadTrustedRoot{Name: r.Name, Json: slices.Clone(r.JSON), Issuers: slices.Clone(r.Issuers)})
	}
	return out
}

// TrustFromProto builds the Trust of an AttestResponse's workload_trust,
// checking it as NewTrust does; nil (an empty Trust) when there is none.
func TrustFromProto(in *pb.WorkloadTrust) (*Trust, error) {
	if len(in.GetSigners())+len(in.GetTrustedRoots()) == 0 {
		return nil, nil
	}
	var keys []Key
	for _, s := range in.GetSigners() {
		keys = append(keys, Key{Name: s.GetName(), DER: s.GetPublicKey()})
	}
	var roots []Root
	for _, r := range in.GetTrustedRoots() {
		roots = append(roots, Root{Name: r.GetName(), JSON: r.GetJson(), Issuers: r.GetIssuers()})
	}
	return NewTrust(keys, roots)
}
