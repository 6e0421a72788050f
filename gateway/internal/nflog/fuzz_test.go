package nflog

import (
	"math/rand/v2"
	"strings"
	"testing"
)

// FuzzParse feeds parse arbitrary bytes: it must never panic, and what it
// accepts must be a coherent Packet. Seeds: the kernel's own messages
// (testdata/*.hex) and messages built from random choices.
func FuzzParse(f *testing.F) {
	for _, name := range capturedNames {
		f.Add(readCaptured(f, name))
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 32 {
		f.Add(newRandomCase(rng).msg)
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		p, err := parse(msg)
		if err != nil {
			if p != (Packet{}) {
				t.Errorf("parse returned %+v with error %v", p, err)
			}
			return
		}
		if !p.Src.IsValid() || !p.Dst.IsValid() || p.Src.Is4() != p.Dst.Is4() {
			t.Errorf("addresses %v and %v", p.Src, p.Dst)
		}
		if p.Proto != protoTCP && p.Proto != protoUDP && (p.SrcPort != 0 || p.DstPort != 0) {
			t.Errorf("ports %d, %d for protocol %d", p.SrcPort, p.DstPort, p.Proto)
		}
		if strings.IndexByte(p.Prefix, 0) >= 0 {
			t.Errorf("prefix %q holds a NUL", p.Prefix)
		}
		if !p.At.IsZero() && p.At.Nanosecond()%1000 != 0 {
			t.Errorf("At %v is finer than the kernel's microseconds", p.At)
		}
	})
}
