package ear

// SignPayload signs arbitrary claims with s's key, for tests of what
// Verify refuses under a valid signature.
func (s *Signer) SignPayload(payload []byte) (string, error) {
	jws, err := s.signer.Sign(payload)
	if err != nil {
		return "", err
	}
	return jws.CompactSerialize()
}
