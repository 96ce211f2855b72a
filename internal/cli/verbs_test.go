package cli

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// blackBoxTests names, for every verb of the command tree, a test that
// runs it through the built binary (a directory relative to the module
// root, and a test function there). A new verb fails
// TestEveryVerbHasABlackBoxTest until a test for it is written and listed
// here.
var blackBoxTests = map[string]struct{ dir, test string }{
	"veil attest quote":              {"internal/cli/attesttest", "TestSimQuoteVerify"},
	"veil attest ratls-cert":         {"internal/cli/attesttest", "TestRATLSCert"},
	"veil attest verify":             {"internal/cli/attesttest", "TestSimQuoteVerify"},
	"veil attest verify-cert":        {"internal/cli/attesttest", "TestRATLSCert"},
	"veil sim init":                  {"internal/cli/attesttest", "TestSimQuoteVerify"},
	"veil build":                     {"internal/cli/imagetest", "TestAcceptance"},
	"veil new":                       {"internal/cli/imagetest", "TestAcceptance"},
	"veil print":                     {"internal/cli/imagetest", "TestAcceptance"},
	"veil verify":                    {"internal/cli/imagetest", "TestAcceptance"},
	"veil package":                   {"ociimage", "TestPackageUnpackRun"},
	"veil unpack":                    {"ociimage", "TestPackageUnpackRun"},
	"veil gen-sign-key":              {"internal/cli/imagetest", "TestKeysAndEncryptedBuild"},
	"veil gen-image-key":             {"internal/cli/imagetest", "TestKeysAndEncryptedBuild"},
	"veil encrypt":                   {"internal/cli", "TestCLIRoundTripFileAndStreams"},
	"veil decrypt":                   {"internal/cli", "TestCLIRoundTripFileAndStreams"},
	"veil gen-key":                   {"internal/cli", "TestCLIGenKey"},
	"veil inspect":                   {"internal/cli", "TestCLITwoKeySlots"},
	"veil version":                   {"internal/cli", "TestCLIHelpAndVersion"},
	"veil run":                       {"internal/cli/runtest", "TestRunWithKMSAndDenial"},
	"veil start":                     {"internal/cli/runtest", "TestStartExecStopAndCrash"},
	"veil exec":                      {"internal/cli/runtest", "TestStartExecStopAndCrash"},
	"veil stop":                      {"internal/cli/runtest", "TestStartExecStopAndCrash"},
	"veil status":                    {"internal/cli/runtest", "TestStartExecStopAndCrash"},
	"veil kill":                      {"internal/cli/runtest", "TestKillDeliversSignals"},
	"veil kms serve":                 {"kms/e2e", "TestDevServerCLIFlow"},
	"veil kms init":                  {"kms/e2e", "TestSealedServerShares"},
	"veil kms unseal":                {"kms/e2e", "TestSealedServerShares"},
	"veil kms status":                {"kms/e2e", "TestSealedServerShares"},
	"veil kms seal":                  {"kms/e2e", "TestKMSAppsAndSeal"},
	"veil kms enroll":                {"kms/e2e", "TestDevServerCLIFlow"},
	"veil kms env":                   {"internal/cli", "TestKMSFirstHourErrors"},
	"veil kms apps":                  {"kms/e2e", "TestKMSAppsAndSeal"},
	"veil kms app rotate-key":        {"kms/e2e", "TestDevServerCLIFlow"},
	"veil kms app disable":           {"kms/e2e", "TestDevServerCLIFlow"},
	"veil kms audit checkpoint":      {"kms/e2e", "TestDevServerCLIFlow"},
	"veil kms audit list":            {"kms/e2e", "TestDevServerCLIFlow"},
	"veil kms audit verify":          {"kms/e2e", "TestDevServerCLIFlow"},
	"veil kms key create":            {"kms/e2e", "TestKMSKeyRotateEncryptDecrypt"},
	"veil kms key list":              {"kms/e2e", "TestKMSKeyStates"},
	"veil kms key describe":          {"kms/e2e", "TestKMSKeyRotateEncryptDecrypt"},
	"veil kms key enable":            {"kms/e2e", "TestKMSKeyStates"},
	"veil kms key disable":           {"kms/e2e", "TestKMSKeyStates"},
	"veil kms key rotate":            {"kms/e2e", "TestKMSKeyRotateEncryptDecrypt"},
	"veil kms key schedule-deletion": {"kms/e2e", "TestKMSKeyStates"},
	"veil kms key cancel-deletion":   {"kms/e2e", "TestKMSKeyStates"},
	"veil kms key encrypt":           {"kms/e2e", "TestKMSKeyRotateEncryptDecrypt"},
	"veil kms key decrypt":           {"kms/e2e", "TestKMSKeyRotateEncryptDecrypt"},
	"veil kms key generate-data-key": {"kms/e2e", "TestKMSKeyDataKeys"},
	"veil kms key sign":              {"kms/e2e", "TestKMSKeySignVerifyPublicKey"},
	"veil kms key verify":            {"kms/e2e", "TestKMSKeySignVerifyPublicKey"},
	"veil kms key public-key":        {"kms/e2e", "TestKMSKeySignVerifyPublicKey"},
	"veil kms secret put":            {"kms/e2e", "TestKMSSecretVerbs"},
	"veil kms secret get":            {"kms/e2e", "TestKMSSecretVerbs"},
	"veil kms secret list":           {"kms/e2e", "TestKMSSecretVerbs"},
	"veil kms secret delete":         {"kms/e2e", "TestKMSSecretVerbs"},
	"veil kms policy create":         {"kms/e2e", "TestKMSPolicyVerbs"},
	"veil kms policy list":           {"kms/e2e", "TestKMSPolicyVerbs"},
	"veil kms policy show":           {"kms/e2e", "TestKMSPolicyVerbs"},
	"veil kms policy delete":         {"kms/e2e", "TestKMSPolicyVerbs"},
	"veil kms policy attach":         {"kms/e2e", "TestKMSPolicyVerbs"},
	"veil kms policy detach":         {"kms/e2e", "TestKMSPolicyVerbs"},
	// Hidden: veil start runs it; no one types it.
	"veil __supervise": {"internal/cli/runtest", "TestStartExecStopAndCrash"},
}

// TestEveryVerbHasABlackBoxTest walks the command tree and fails for a
// runnable verb that blackBoxTests does not list, or for an entry that
// names no verb. For each entry it checks that the named test exists and
// that it, or a function of its package it calls, holds every word of the
// verb as a string literal (the arguments it passes to the binary).
func TestEveryVerbHasABlackBoxTest(t *testing.T) {
	root := NewRoot(&Env{Stdin: strings.NewReader(""), Stdout: io.Discard, Stderr: io.Discard})
	var verbs []string
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Runnable() {
			verbs = append(verbs, c.CommandPath())
		}
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(root)
	if len(verbs) < 50 {
		t.Fatalf("only %d verbs found: %v", len(verbs), verbs)
	}
	for _, v := range verbs {
		if _, ok := blackBoxTests[v]; !ok {
			t.Errorf("verb %q has no black-box test: write one (built binary, internal/veiltest) and list it in blackBoxTests", v)
		}
	}
	pkgs := map[string]*testPackage{}
	for v, e := range blackBoxTests {
		if !slices.Contains(verbs, v) {
			t.Errorf("blackBoxTests lists %q, which is not a verb", v)
			continue
		}
		p := pkgs[e.dir]
		if p == nil {
			p = parseTestPackage(t, filepath.Join("..", "..", e.dir))
			pkgs[e.dir] = p
		}
		if p.funcs[e.test] == nil {
			t.Errorf("%s: test %s does not exist in %s", v, e.test, e.dir)
			continue
		}
		if strings.HasPrefix(v, "veil __") {
			continue
		}
		lits := p.literalsReachedFrom(e.test)
		for _, word := range strings.Fields(v)[1:] {
			if !lits[word] {
				t.Errorf("%s: %s.%s never passes %q to the binary", v, e.dir, e.test, word)
			}
		}
	}
}

type testPackage struct {
	funcs map[string]*ast.FuncDecl // by name; methods too
}

func parseTestPackage(t *testing.T, dir string) *testPackage {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*_test.go"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no tests in %s: %v", dir, err)
	}
	p := &testPackage{funcs: map[string]*ast.FuncDecl{}}
	fset := token.NewFileSet()
	for _, f := range files {
		af, err := parser.ParseFile(fset, f, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range af.Decls {
			if fd, ok := d.(*ast.FuncDecl); ok {
				p.funcs[fd.Name.Name] = fd
			}
		}
	}
	return p
}

// literalsReachedFrom returns the string literals of fn and of every
// function of the package it calls, directly or not.
func (p *testPackage) literalsReachedFrom(fn string) map[string]bool {
	lits := map[string]bool{}
	seen := map[string]bool{fn: true}
	queue := []string{fn}
	for len(queue) > 0 {
		fd := p.funcs[queue[0]]
		queue = queue[1:]
		ast.Inspect(fd, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.BasicLit:
				if s, err := strconv.Unquote(n.Value); err == nil && n.Kind == token.STRING {
					lits[s] = true
				}
			case *ast.CallExpr:
				var name string
				switch f := n.Fun.(type) {
				case *ast.Ident:
					name = f.Name
				case *ast.SelectorExpr:
					name = f.Sel.Name
				}
				if p.funcs[name] != nil && !seen[name] {
					seen[name] = true
					queue = append(queue, name)
				}
			}
			return true
		})
	}
	return lits
}
