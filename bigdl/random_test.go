package bigdl

import "testing"

// TestJavaRandom pins the generator to java.util.Random's published
// outputs: new Random(0).nextInt() and new Random(42).nextInt().
func TestJavaRandom(t *testing.T) {
	for seed, want := range map[int64]int32{0: -1155484576, 42: -1170105035} {
		if got := newJavaRandom(seed).next(32); got != want {
			t.Errorf("Random(%d).nextInt() = %d, want %d", seed, got, want)
		}
	}
}
