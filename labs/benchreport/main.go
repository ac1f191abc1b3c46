// Command benchreport turns the output of `make bench` (Go benchmarks run
// several times, and the labs' "measure:" lines from several runs) into
// docs/benchmarks.md: each measurement with its median over the runs and,
// where it varied, the range; the machine it ran on; the anchors to compare
// with.
//
// Usage: benchreport -go go.txt -labs labs.txt -runs N > docs/benchmarks.md
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

var number = regexp.MustCompile(`[0-9]+(,[0-9]{3})*(\.[0-9]+)?`)

// series is one kind of line (its text with the numbers taken out) and
// the numbers each occurrence had.
type series struct {
	shape string
	parts []string // the text between the numbers
	runs  [][]float64
	raw   []string // the numbers as first written
	first int      // order of first appearance
}

// single is labtest.Report's line for one timed event: the median, min
// and max of one value are that value.
var single = regexp.MustCompile(`median ([0-9.]+) ms, min [0-9.]+ ms, max [0-9.]+ ms \(1 runs\)`)

// collect groups lines by shape.
func collect(lines []string) []*series {
	by := map[string]*series{}
	var out []*series
	for _, l := range lines {
		l = single.ReplaceAllString(l, "$1 ms")
		nums := number.FindAllString(l, -1)
		parts := number.Split(l, -1)
		shape := strings.Join(parts, "#")
		s := by[shape]
		if s == nil {
			s = &series{shape: shape, parts: parts, raw: nums, first: len(out)}
			by[shape] = s
			out = append(out, s)
		}
		var v []float64
		for _, n := range nums {
			f, _ := strconv.ParseFloat(strings.ReplaceAll(n, ",", ""), 64)
			v = append(v, f)
		}
		s.runs = append(s.runs, v)
	}
	return out
}

func median(v []float64) float64 {
	v = slices.Clone(v)
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

func format(f float64) string {
	switch {
	case f == float64(int64(f)):
		return strconv.FormatInt(int64(f), 10)
	case f >= 100:
		return strconv.FormatFloat(f, 'f', 0, 64)
	case f >= 10:
		return strconv.FormatFloat(f, 'f', 1, 64)
	}
	return strconv.FormatFloat(f, 'f', 2, 64)
}

// render writes the shape with each number replaced by its median over
// the runs, and [min-max] where the runs differ.
func (s *series) render() string {
	var b strings.Builder
	for i, p := range s.parts {
		b.WriteString(p)
		if i == len(s.parts)-1 {
			break
		}
		var col []float64
		for _, r := range s.runs {
			if i < len(r) {
				col = append(col, r[i])
			}
		}
		if len(col) == 0 {
			continue
		}
		lo, hi := slices.Min(col), slices.Max(col)
		if lo == hi {
			b.WriteString(s.raw[i]) // the same in every run: a setting, or a steady result
			continue
		}
		b.WriteString("**" + format(median(col)) + "** [" + format(lo) + "-" + format(hi) + "]")
	}
	return b.String()
}

func readLines(path string, keep func(string) (string, bool)) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if l, ok := keep(sc.Text()); ok {
			out = append(out, l)
		}
	}
	return out, sc.Err()
}

var measureRE = regexp.MustCompile(`measure: (.*)$`)

// benchRE is a Go benchmark result line: name, iterations, metrics.
var benchRE = regexp.MustCompile(`^(Benchmark\S+?)(-\d+)?\s+\d+\s+(.*)$`)

func machine() string {
	var b strings.Builder
	cpu := "unknown CPU"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	kernel, _ := exec.Command("uname", "-r").Output()
	osName := "Linux"
	if data, err := os.ReadFile("/etc/os-release"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(l, "PRETTY_NAME="); ok {
				osName = strings.Trim(v, `"`)
			}
		}
	}
	bird, _ := exec.Command("bird", "--version").CombinedOutput()
	fmt.Fprintf(&b, "- %s, %d cores (%s), %s, kernel %s (no IPVS: the IPVS numbers come from Debian's kernel under qemu without KVM)\n",
		cpu, runtime.NumCPU(), runtime.GOARCH, osName, strings.TrimSpace(string(kernel)))
	fmt.Fprintf(&b, "- %s; %s\n", runtime.Version(), strings.TrimSpace(string(bird)))
	return b.String()
}

func main() {
	goFile := flag.String("go", "", "Go benchmark output")
	labsFile := flag.String("labs", "", "lab test output (-v) with measure: lines")
	soakFile := flag.String("soak", "", "the long soak's output (go test -v of TestLabSoak)")
	update := flag.String("update", "", "with -soak alone: this benchmarks.md with only its long-soak section replaced")
	runs := flag.Int("runs", 5, "how many runs the inputs hold (for the text)")
	flag.Parse()
	w := bufio.NewWriter(os.Stdout)
	defer w.Flush()
	if *update != "" {
		old, err := os.ReadFile(*update)
		if err == nil {
			var sec strings.Builder
			err = writeSoak(&sec, *soakFile)
			if err == nil {
				_, err = w.WriteString(replaceSoak(string(old), sec.String()))
			}
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "benchreport:", err)
			os.Exit(1)
		}
		return
	}
	if err := write(w, *goFile, *labsFile, *soakFile, *runs); err != nil {
		fmt.Fprintln(os.Stderr, "benchreport:", err)
		os.Exit(1)
	}
}

func write(w io.Writer, goFile, labsFile, soakFile string, runs int) error {
	fmt.Fprintf(w, "# Benchmarks\n\nWritten by `make bench` on %s; do not edit by hand.\n\n", time.Now().UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(w, "## The machine\n\n%s\n", machine())
	fmt.Fprintf(w, `A number in **bold** is the median over the runs (%d), followed by the
range [min-max]; a plain number was the same in every run. The lab measurements are one event
timed per run (or, where the line says so, the median of repetitions
inside one run, then the median of those). Nothing here is asserted by a
test: these machines are noisy.

`, runs)
	if labsFile != "" {
		lines, err := readLines(labsFile, func(l string) (string, bool) {
			m := measureRE.FindStringSubmatch(l)
			if m == nil {
				return "", false
			}
			return strings.TrimSpace(m[1]), true
		})
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "## Lab measurements\n\n")
		for _, s := range collect(lines) {
			line := "- " + s.render()
			if len(s.runs) > 1 {
				line += fmt.Sprintf(" — %d runs of the lab", len(s.runs))
			}
			fmt.Fprintln(w, line)
		}
		fmt.Fprintln(w)
	}
	if soakFile != "" {
		if err := writeSoak(w, soakFile); err != nil {
			return err
		}
	}
	if goFile != "" {
		lines, err := readLines(goFile, func(l string) (string, bool) {
			m := benchRE.FindStringSubmatch(l)
			if m == nil {
				return "", false
			}
			return m[1] + ": " + strings.Join(strings.Fields(m[3]), " "), true
		})
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "## Go benchmarks (`go test -bench . -count %d`)\n\n", runs)
		for _, s := range collect(lines) {
			fmt.Fprintf(w, "- %s\n", s.render())
		}
		fmt.Fprintln(w)
	}
	fmt.Fprint(w, anchors)
	return nil
}

const soakHeading = "## The long soak (`labs/soak`)"

// writeSoak writes the long soak's section.
func writeSoak(w io.Writer, soakFile string) error {
	reports, err := soakReports(soakFile)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "%s\n\nRun by `make bench` on %s.\n\n", soakHeading, time.Now().UTC().Format("2006-01-02 15:04 MST"))
	if len(reports) == 0 {
		fmt.Fprintf(w, "No report: the soak did not run to its end (see %s).\n\n", soakFile)
	}
	for _, r := range reports {
		fmt.Fprintf(w, "```\n%s```\n\n", r)
	}
	return nil
}

// replaceSoak is doc with its long-soak section replaced by sec, or sec
// put before the Go benchmarks (or the anchors) when it has none.
func replaceSoak(doc, sec string) string {
	if i := strings.Index(doc, soakHeading); i >= 0 {
		end := len(doc)
		if j := strings.Index(doc[i+len(soakHeading):], "\n## "); j >= 0 {
			end = i + len(soakHeading) + j + 1
		}
		return doc[:i] + sec + doc[end:]
	}
	for _, h := range []string{"## Go benchmarks", "## What to compare them with"} {
		if i := strings.Index(doc, h); i >= 0 {
			return doc[:i] + sec + doc[i:]
		}
	}
	return doc + "\n" + sec
}

// soakReports are the soak reports in a TestLabSoak output: each from its
// "soak report" line to the end of its indented block, unindented.
func soakReports(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []string
	var cur *strings.Builder
	indent := ""
	for _, line := range strings.Split(string(b), "\n") {
		if i := strings.Index(line, "soak report"); i >= 0 {
			if cur != nil {
				out = append(out, cur.String())
			}
			cur, indent = &strings.Builder{}, line[:i]
		}
		if cur == nil {
			continue
		}
		rest, ok := strings.CutPrefix(line, indent)
		if !ok || strings.HasPrefix(strings.TrimSpace(line), "--- ") || strings.HasPrefix(strings.TrimSpace(line), "=== ") {
			out = append(out, cur.String())
			cur = nil
			continue
		}
		cur.WriteString(rest + "\n")
	}
	if cur != nil {
		out = append(out, cur.String())
	}
	return out, nil
}

const anchors = `## What to compare them with

- **keepalived / VRRP**: a backup takes over after the master-down interval,
  3 x advert_int + skew (about 3.0-3.9 s with the usual advert_int 1 s; 300-
  390 ms at 100 ms). The fallback mode's numbers (issue 8) land here.
- **BGP without BFD**: a dead or cut-off director is noticed when the hold
  timer runs out: 90 or 180 s with common vendor defaults, 3 s with the lab's
  aggressive 1 s / 3 s timers. A killed daemon is faster (the kernel closes
  the TCP session) but a dead box or a cut link is not.
- **BFD**: detection is min_rx x multiplier: 300 ms at 100 ms x 3, the lab's
  setting; plus the router's FIB update.
- **OSPF**: dead interval 40 s by default (3 s in the lab); a director may
  originate a new LSA at most every 5 s (MinLSInterval).
- **Classic LVS + keepalived (one active director)**: a failover moves every
  flow; without connection sync, established flows break. With anycastd's
  mh + sloppy_tcp the flow survival line above is the comparison.
`
