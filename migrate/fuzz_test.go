package migrate

import (
	"os"
	"testing"
)

// FuzzFromGramine and FuzzFromOcclum: no panics, and whatever imports
// validates as a veil.json (finish checks it).
func FuzzFromGramine(f *testing.F) {
	b, err := os.ReadFile("testdata/python.manifest.toml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte("[[fs.mounts]]\ntype = \"encrypted\"\npath = \"/d\"\nuri = \"file:e\"\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := FromGramine(data, Options{BaseDir: "/base"})
		if err == nil && r.Config == nil {
			t.Fatal("no configuration and no error")
		}
	})
}

func FuzzFromOcclum(f *testing.F) {
	b, err := os.ReadFile("testdata/Occlum.json")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte(`{"env": ["A=b"], "mount": [{"target": "/x", "type": "ramfs"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := FromOcclum(data, Options{BaseDir: "/base"})
		if err == nil && r.Config == nil {
			t.Fatal("no configuration and no error")
		}
	})
}
