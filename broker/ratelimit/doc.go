// Package ratelimit admits or refuses requests by key (an EK hash, a
// source address) with token buckets: each key may spend Burst requests at
// once and regains Rate of them per second.
//
// A Limiter keeps its buckets in memory, bounded by Opts.MaxKeys. A bucket
// that has refilled completely carries no information (it behaves exactly
// like a key never seen), so such buckets are swept as time passes and are
// the first to go when the table is full. When the table is full and even
// the least recently used bucket is still refilling, that bucket is evicted
// anyway: memory stays bounded whatever an attacker sprays, at the price of
// giving that one key a fresh burst. To take a busy key's state away, an
// attacker has to present MaxKeys distinct keys, each one admitted by
// whatever limits sit in front, between two requests of that key; and all
// it gains is one burst for that key, which is only worth anything to the
// attacker if the key is its own. The alternative, refusing new keys while
// the table is full, would let the same flood lock every newcomer out.
//
// Limits are per Limiter, that is per process. keybroker's brokers run as
// replicas that share no counter: across R replicas a key gets at most R
// times its budget. Sharing the counter would cost a durable, replicated
// write on every request, which is the cost these limits exist to prevent
// (a Challenge writes nothing durable); R times a small budget still stops
// a flood.
//
// A bound on outstanding items that are never stored, such as stateless
// challenge tokens, is a budget per validity window: Budget(n, ttl) admits
// n at once and n per ttl afterwards, so no more than about 2n tokens
// issued for one key are ever valid at the same time, and exactly n in a
// steady flood.
package ratelimit
