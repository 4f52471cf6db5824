package model

import (
	"reflect"
	"unsafe"

	G "gorgonia.org/gorgonia"
)

// rewind prepares a gorgonia TapeMachine for the next run of the same
// program while keeping its registers. tapeMachine.Reset drops every
// register, so the next run re-allocates every intermediate tensor (tens of
// MB per step at the tiny preset); with the registers kept, gorgonia's alloc
// instructions find a value of the right shape and its ops write through
// UsePreallocDo, and our ops return their own buffers anyway. The program
// counter is unexported, so it is set through reflection; rewind reports
// false (and the caller falls back to Reset) if the field is not there, as
// it would be after a gorgonia upgrade that renamed it. Tests check that a
// rewound machine computes exactly what a reset one does.
func rewind(vm G.VM) bool {
	v := reflect.ValueOf(vm)
	if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
		return false
	}
	pc := v.Elem().FieldByName("pc")
	if !pc.IsValid() || pc.Kind() != reflect.Int || !pc.CanAddr() {
		return false
	}
	*(*int)(unsafe.Pointer(pc.UnsafeAddr())) = 0
	return true
}
