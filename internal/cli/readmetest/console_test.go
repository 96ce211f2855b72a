package readmetest

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseConsole(t *testing.T) {
	md := "text\n```\nnot this\n```\n```console\n# a comment\n$ echo a \\\n  b\na b\n\n$ true &\n```\n```console\n$ ignored\n```\n"
	steps, err := parseConsole([]byte(md))
	if err != nil {
		t.Fatal(err)
	}
	want := []step{{Line: 7, Cmd: "echo a \\\n  b", Out: []string{"a b"}}, {Line: 11, Cmd: "true &"}}
	if !reflect.DeepEqual(steps, want) {
		t.Fatalf("got %+v, want %+v", steps, want)
	}
	s := script(steps, "/out")
	if !strings.Contains(s, "{ echo a \\\n  b\n} | tee '/out/0'") || !strings.Contains(s, "\ntrue &\n") {
		t.Fatalf("script:\n%s", s)
	}
	for _, bad := range []string{"```console\nout first\n```\n", "no block", "```console\n$ x\n"} {
		if _, err := parseConsole([]byte(bad)); err == nil {
			t.Errorf("%q: parsed", bad)
		}
	}
}
