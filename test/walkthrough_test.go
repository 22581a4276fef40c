package test

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/siftmesh/sift/internal/netns"
)

// TestMeshWalkthrough runs docs/mesh-walkthrough.md: every ```sh block in
// order, in one bash, in a temporary directory, with freshly built binaries
// on the PATH; the output of each block must match the ```console block
// that follows it (numbers, times and durations aside), and a block with no
// console block must print nothing. The documentation therefore cannot rot.
// -update-walkthrough rewrites the console blocks from this run's output.
var updateWalkthrough = flag.Bool("update-walkthrough", false, "rewrite docs/mesh-walkthrough.md's outputs from this run")

const walkthroughPath = "../docs/mesh-walkthrough.md"

func TestMeshWalkthrough(t *testing.T) {
	if err := netns.Check(); err != nil {
		t.Skipf("mesh walkthrough skipped: %v", err)
	}
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("mesh walkthrough skipped: needs curl (.ci/run installs it)")
	}
	doc, err := os.ReadFile(walkthroughPath)
	if err != nil {
		t.Fatal(err)
	}
	blocks, err := parseWalkthrough(string(doc))
	if err != nil {
		t.Fatalf("%s: %v", walkthroughPath, err)
	}
	cleanup := blocks[len(blocks)-1]
	if !strings.Contains(cleanup.script, "ip netns del") {
		t.Fatalf("%s: the last block must clean up (ip netns del); it is:\n%s", walkthroughPath, cleanup.script)
	}

	// The document names its network namespaces; two runs on one machine
	// (two checkouts' make test) take turns.
	lock, err := os.OpenFile(filepath.Join(os.TempDir(), "sift-mesh-walkthrough.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lock.Close() }) // registered first: released after the namespaces are gone
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}

	bin := t.TempDir()
	for name, pkg := range map[string]string{
		"sift-proxy":    "github.com/siftmesh/sift/cmd/sift-proxy",
		"sift-control":  "github.com/siftmesh/sift/cmd/sift-control",
		"demo-backends": "github.com/siftmesh/sift/examples/demo-backends",
	} {
		if err := os.Symlink(binary(t, pkg), filepath.Join(bin, name)); err != nil {
			t.Fatal(err)
		}
	}
	work := t.TempDir()
	bash := func(ctx context.Context, script string) ([]byte, error) {
		cmd := exec.CommandContext(ctx, "bash", "-c", script)
		cmd.Dir = work
		cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"))
		cmd.WaitDelay = time.Second // background processes may hold the pipe: cleanup kills them
		return cmd.CombinedOutput()
	}
	runCleanup := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if out, err := bash(ctx, cleanup.script); err != nil {
			t.Logf("cleanup: %v\n%s", err, out)
		}
	}
	runCleanup() // a killed earlier run's namespaces
	t.Cleanup(func() {
		runCleanup()
		if t.Failed() {
			logs, _ := filepath.Glob(filepath.Join(work, "*.log"))
			for _, l := range logs {
				b, _ := os.ReadFile(l)
				t.Logf("%s:\n%s", filepath.Base(l), tail(string(b), 40))
			}
		}
	})

	// One script, each block preceded by a marker line, so that background
	// processes and variables carry over as in the reader's shell.
	var script strings.Builder
	script.WriteString("set -eo pipefail\n")
	for i, b := range blocks {
		fmt.Fprintf(&script, "echo '%s %d'\n%s\n", walkthroughMarker, i, b.script)
	}
	// A bound on a broken step (a wait loop that never ends), not a speed check.
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	out, err := bash(ctx, script.String())
	outputs := splitWalkthroughOutput(string(out), len(blocks))
	if err != nil {
		t.Fatalf("the walkthrough failed: %v\n%s", err, out)
	}

	if *updateWalkthrough {
		updated := string(doc)
		for i := len(blocks) - 1; i >= 0; i-- {
			b := blocks[i]
			if b.console == nil {
				continue
			}
			updated = updated[:b.console[0]] + outputs[i] + updated[b.console[1]:]
		}
		if err := os.WriteFile(walkthroughPath, []byte(updated), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	for i, b := range blocks {
		got := normalizeWalkthrough(outputs[i])
		want := []string(nil)
		if b.console != nil {
			want = normalizeWalkthrough(string(doc[b.console[0]:b.console[1]]))
		}
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("block %d (line %d) printed:\n%s\nthe document shows:\n%s\n(compared with numbers and times masked; -update-walkthrough rewrites the document)",
				i, b.line, outputs[i], strings.Join(want, "\n"))
		}
	}
}

const walkthroughMarker = "@@walkthrough-block"

// walkthroughBlock is a ```sh block to run; console is the byte range of the
// ```console block that follows it (its expected output), or nil.
type walkthroughBlock struct {
	script  string
	line    int
	console []int
}

// parseWalkthrough finds the ```sh blocks (```sh skip: shown, not run) and
// the ```console block after each.
func parseWalkthrough(doc string) ([]walkthroughBlock, error) {
	var blocks []walkthroughBlock
	pos, line := 0, 1
	for pos < len(doc) {
		end := strings.IndexByte(doc[pos:], '\n')
		if end < 0 {
			end = len(doc) - pos
		}
		l := doc[pos : pos+end]
		next := pos + end + 1
		if lang, ok := strings.CutPrefix(l, "```"); ok && lang != "" {
			body := next
			closing := strings.Index(doc[body:], "\n```\n")
			if closing < 0 {
				return nil, fmt.Errorf("line %d: unclosed code block", line)
			}
			content := doc[body : body+closing+1]
			switch lang {
			case "sh":
				blocks = append(blocks, walkthroughBlock{script: content, line: line})
			case "console":
				if len(blocks) == 0 || blocks[len(blocks)-1].console != nil {
					return nil, fmt.Errorf("line %d: a console block must follow a sh block", line)
				}
				blocks[len(blocks)-1].console = []int{body, body + closing + 1}
			}
			line += strings.Count(doc[pos:body+closing+5], "\n")
			pos = body + closing + 5
			continue
		}
		pos, line = next, line+1
	}
	if len(blocks) == 0 {
		return nil, fmt.Errorf("no sh blocks")
	}
	return blocks, nil
}

// splitWalkthroughOutput cuts the script's output at the block markers.
func splitWalkthroughOutput(out string, n int) []string {
	outputs := make([]string, n)
	i := -1
	for _, l := range strings.SplitAfter(out, "\n") {
		var k int
		if _, err := fmt.Sscanf(l, walkthroughMarker+" %d\n", &k); err == nil && k >= 0 && k < n {
			i = k
			continue
		}
		if i >= 0 {
			outputs[i] += l
		}
	}
	return outputs
}

var (
	walkthroughTime     = regexp.MustCompile(`\b\d\d:\d\d:\d\d(\.\d+)?\b`)
	walkthroughDuration = regexp.MustCompile(`\b\d+(\.\d+)?(ns|µs|us|ms|s)\b`)
	walkthroughNumber   = regexp.MustCompile(`\d+`)
	walkthroughSpaces   = regexp.MustCompile(`\s+`)
)

// normalizeWalkthrough masks what changes between runs: times of day,
// durations, and every other number (ports, counts, byte sizes); and the
// column widths that follow from them.
func normalizeWalkthrough(s string) []string {
	var lines []string
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		l = walkthroughTime.ReplaceAllString(l, "<time>")
		l = walkthroughDuration.ReplaceAllString(l, "<duration>")
		l = walkthroughNumber.ReplaceAllString(l, "0")
		l = strings.TrimSpace(walkthroughSpaces.ReplaceAllString(l, " "))
		if l != "" {
			lines = append(lines, l)
		}
	}
	return lines
}

func tail(s string, n int) string {
	lines := bytes.Split([]byte(strings.TrimRight(s, "\n")), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}
