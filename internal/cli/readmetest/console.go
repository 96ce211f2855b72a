package readmetest

import (
	"bufio"
	"bytes"
	"fmt"
	"strings"
)

// A step is one command of a console block and the output lines the
// document shows after it.
type step struct {
	Line int    // line of the document where the command starts
	Cmd  string // the command, continuation lines joined with newlines
	Out  []string
}

// parseConsole returns the steps of the first ```console block of md:
// "$ " starts a command (a trailing backslash continues it on the next
// line), "#" lines and blank lines are comments, anything else is output
// of the command before.
func parseConsole(md []byte) ([]step, error) {
	sc := bufio.NewScanner(bytes.NewReader(md))
	var steps []step
	in, cont, found := false, false, false
	n := 0
	for sc.Scan() {
		n++
		line := sc.Text()
		switch {
		case !in && strings.TrimSpace(line) == "```console":
			if found {
				return steps, nil
			}
			in, found = true, true
			continue
		case !in:
			continue
		case strings.TrimSpace(line) == "```":
			in = false
			continue
		}
		if cont {
			last := &steps[len(steps)-1]
			last.Cmd += "\n" + line
			cont = strings.HasSuffix(line, "\\")
			continue
		}
		switch {
		case strings.HasPrefix(line, "$ "):
			steps = append(steps, step{Line: n, Cmd: strings.TrimPrefix(line, "$ ")})
			cont = strings.HasSuffix(line, "\\")
		case strings.TrimSpace(line) == "", strings.HasPrefix(line, "#"):
		default:
			if len(steps) == 0 {
				return nil, fmt.Errorf("line %d: output before any command", n)
			}
			steps[len(steps)-1].Out = append(steps[len(steps)-1].Out, line)
		}
	}
	if !found {
		return nil, fmt.Errorf("no ```console block")
	}
	if in {
		return nil, fmt.Errorf("the console block is not closed")
	}
	return steps, sc.Err()
}

// script turns steps into a bash script that runs them in order and stops
// at the first failure. The output of a step that shows output is also
// written to outDir/N for comparison. Background jobs are ended on exit.
func script(steps []step, outDir string) string {
	var b strings.Builder
	b.WriteString(`set -euo pipefail
_end() { local rc=$?; kill $(jobs -p) 2>/dev/null || true; wait || true; exit $rc; }
trap _end EXIT
`)
	for i, s := range steps {
		fmt.Fprintf(&b, "printf '\\n$ %%s\\n' %s >&2\n", shellQuote(s.Cmd))
		if len(s.Out) > 0 {
			fmt.Fprintf(&b, "{ %s\n} | tee %s\n", s.Cmd, shellQuote(fmt.Sprintf("%s/%d", outDir, i)))
		} else {
			fmt.Fprintf(&b, "%s\n", s.Cmd)
		}
	}
	return b.String()
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
