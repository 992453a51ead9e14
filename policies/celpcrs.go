package policies

import (
	"reflect"
	"sync"

	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/common/types/ref"
	"github.com/google/cel-go/common/types/traits"
)

// celPCRs and celBank present the pcrs facts to CEL as the map(string,
// map(int, string)) they are, but look up a bank by name and a PCR by
// index without reflection: CEL reads any other native map through
// reflection, allocating on every lookup, and pcrs.sha256[7] is what most
// require expressions read. Every other operation (size, iteration, in with
// other key types, equality, conversion) is CEL's own map's, on the same
// Go map.
type (
	celPCRs map[string]map[int64]string
	celBank map[int64]string
)

// celAdapter is the adapter of celEnv, which converts native values to CEL.
var celAdapter = sync.OnceValue(func() types.Adapter {
	env, err := celEnv()
	if err != nil {
		// Nothing compiles without the environment, so no policy can
		// reach here; were one to, it must not evaluate differently.
		panic("policies: the CEL environment does not build: " + err.Error())
	}
	return env.CELTypeAdapter()
})

var (
	_ traits.Mapper = celPCRs(nil)
	_ traits.Mapper = celBank(nil)
)

// Find looks a bank up by name; a key of another type as CEL does.
func (m celPCRs) Find(key ref.Val) (ref.Val, bool) {
	k, ok := key.(types.String)
	if !ok {
		return m.dyn().Find(key)
	}
	bank, found := m[string(k)]
	if !found {
		return nil, false
	}
	return celBank(bank), true
}

// Find looks a PCR up by index; a key of another type as CEL does.
func (m celBank) Find(key ref.Val) (ref.Val, bool) {
	k, ok := key.(types.Int)
	if !ok {
		return m.dyn().Find(key)
	}
	v, found := m[int64(k)]
	if !found {
		return nil, false
	}
	return types.String(v), true
}

func (m celPCRs) dyn() traits.Mapper {
	return types.NewDynamicMap(celAdapter(), map[string]map[int64]string(m))
}

func (m celBank) dyn() traits.Mapper {
	return types.NewDynamicMap(celAdapter(), map[int64]string(m))
}

// The rest of ref.Val and traits.Mapper: Get and Contains by Find, as CEL's
// maps do, everything else by CEL's map.

func (m celPCRs) Get(key ref.Val) ref.Val      { return get(m, key) }
func (m celBank) Get(key ref.Val) ref.Val      { return get(m, key) }
func (m celPCRs) Contains(key ref.Val) ref.Val { _, ok := m.Find(key); return types.Bool(ok) }
func (m celBank) Contains(key ref.Val) ref.Val { _, ok := m.Find(key); return types.Bool(ok) }

func get(m traits.Mapper, key ref.Val) ref.Val {
	v, found := m.Find(key)
	if !found {
		return types.ValOrErr(v, "no such key: %v", key)
	}
	return v
}

func (m celPCRs) Value() any                  { return map[string]map[int64]string(m) }
func (m celBank) Value() any                  { return map[int64]string(m) }
func (m celPCRs) Type() ref.Type              { return types.MapType }
func (m celBank) Type() ref.Type              { return types.MapType }
func (m celPCRs) Size() ref.Val               { return types.Int(len(m)) }
func (m celBank) Size() ref.Val               { return types.Int(len(m)) }
func (m celPCRs) IsZeroValue() bool           { return len(m) == 0 }
func (m celBank) IsZeroValue() bool           { return len(m) == 0 }
func (m celPCRs) Iterator() traits.Iterator   { return m.dyn().Iterator() }
func (m celBank) Iterator() traits.Iterator   { return m.dyn().Iterator() }
func (m celPCRs) Equal(other ref.Val) ref.Val { return m.dyn().Equal(other) }
func (m celBank) Equal(other ref.Val) ref.Val { return m.dyn().Equal(other) }
func (m celPCRs) ConvertToType(t ref.Type) ref.Val {
	return m.dyn().ConvertToType(t)
}
func (m celBank) ConvertToType(t ref.Type) ref.Val {
	return m.dyn().ConvertToType(t)
}
func (m celPCRs) ConvertToNative(t reflect.Type) (any, error) {
	return m.dyn().ConvertToNative(t)
}
func (m celBank) ConvertToNative(t reflect.Type) (any, error) {
	return m.dyn().ConvertToNative(t)
}
